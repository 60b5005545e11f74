"""Metrics as JSON lines in the run directory, and a PNG of loss and WER over steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from featstore.storage import finite


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(finite(record), allow_nan=False) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records after `last_step`: a resumed run writes them again."""
    kept = [r for r in read_metrics(path) if r["step"] <= last_step]
    path.write_text("".join(json.dumps(finite(r), allow_nan=False) + "\n" for r in kept), encoding="utf-8")


def plot_metrics(records: list[dict[str, Any]], out: Path) -> None:
    """Training loss (left) and eval WER/CER (right) against optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_wer" in r]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train])
    left.set(xlabel="step", ylabel="CTC loss", title="training loss")
    right.plot([r["step"] for r in evals], [r["eval_wer"] for r in evals], marker="o", label="WER")
    right.plot([r["step"] for r in evals], [r["eval_cer"] for r in evals], marker="o", label="CER")
    right.set(xlabel="step", ylabel="error rate", title="eval")
    right.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
