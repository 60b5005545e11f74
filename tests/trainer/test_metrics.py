"""Metrics stay valid JSON when training diverges (a NaN or infinite loss), and still plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.metrics import append_metrics, plot_metrics, read_metrics, truncate_metrics


def strict(line: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_a_diverged_loss_is_written_as_null_and_still_plots(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    append_metrics(metrics, {"step": 10, "loss": 2.5})
    append_metrics(metrics, {"step": 20, "loss": float("nan"), "learning_rate": float("inf")})
    append_metrics(metrics, {"step": 20, "eval_wer": 1.0, "eval_cer": 0.9})
    assert [strict(line) for line in metrics.read_text().splitlines()][1] == {
        "step": 20,
        "loss": None,
        "learning_rate": None,
    }
    truncate_metrics(metrics, 20)
    assert len(metrics.read_text().splitlines()) == 3
    plot_metrics(read_metrics(metrics), tmp_path / "metrics.png")
    assert (tmp_path / "metrics.png").stat().st_size > 1000
