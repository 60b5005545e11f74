"""Score every utterance of a store with a trained run, worst first: how data cleaning finds mislabels.

A clip whose transcript does not match its audio (swapped with another clip's, cut short, a
silent recording) costs a model that has learned the language far more CTC loss per character
than a clean clip of the same length, and its greedy transcript disagrees with the text. The
table gives both, with what helps to judge a clip by eye (speaking rate, level), so a user can
pick a threshold and train again without those clips (`trainer fit --exclude-cer-above`).

It streams batches like `trainer evaluate` (no augmentation, the model in eval mode) and keeps
one small row per utterance, so it works on a store of any size.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import jiwer
import torch
from transformers import Wav2Vec2Processor

from featstore import FeatStore
from trainer.claims import claim_table
from trainer.data import Batch, StoreDataset, make_loader, model_inputs
from trainer.inference import greedy_ids, output_frames, pick_device
from trainer.run import load_trained, write_atomic
from trainer.stores import open_checked
from trainer.vocab import decode_labels, decode_predictions


@dataclass(frozen=True)
class UtteranceScore:
    """One row of the table (the column order of the CSV)."""

    index: int
    audio_filepath: str
    loss_per_char: float  # CTC loss / target characters; inf when the text cannot fit the audio
    cer: float
    wer: float
    hypothesis: str
    reference: str  # the normalized transcript the model was trained on
    duration: float
    chars_per_second: float  # speaking rate: transcript characters (no spaces) per second
    level_db: float


def score_store(run_path: Path, store_path: Path, out: Path, device_name: str = "auto", workers: int = 0) -> int:
    """Write the table worst first (highest loss per character, then CER) to `out`; return its rows.

    `out` may replace only an earlier score table, and never lies in the store.
    """
    claim_table(out, is_score_header, "score table", "scores.csv", store_path)
    store = open_checked(store_path, need_text=True)
    device = pick_device(device_name)
    model, processor, config = load_trained(run_path, device)
    loader = make_loader(
        StoreDataset(store_path, processor, config.text), config.batch.sampler(store, shuffle=False), workers
    )
    rows: list[UtteranceScore] = []
    for batch in loader:
        rows.extend(score_batch(model, batch, processor, store, device))
    rows.sort(key=lambda row: (-row.loss_per_char, -row.cer, row.index))
    write_table(rows, out)
    return len(rows)


@torch.no_grad()
def score_batch(
    model: torch.nn.Module, batch: Batch, processor: Wav2Vec2Processor, store: FeatStore, device: torch.device
) -> list[UtteranceScore]:
    inputs = model_inputs(batch, device)
    labels = inputs.pop("labels")
    logits = model(**inputs).logits
    losses = ctc_losses(model, logits, inputs["attention_mask"], labels, processor.tokenizer.pad_token_id)
    hypotheses = decode_predictions(processor, greedy_ids(model, logits, inputs["attention_mask"]))
    rows = []
    for row, index in enumerate(batch.indices.tolist()):
        reference = decode_labels(processor, batch.labels[row].tolist())
        characters = len(reference.replace(" ", ""))
        duration = float(store.durations[index])
        rows.append(
            UtteranceScore(
                index=index,
                audio_filepath=str(store.record(index)["audio_filepath"]),
                loss_per_char=float(losses[row]) / max(characters, 1),
                cer=error_rate(reference, hypotheses[row], jiwer.cer),
                wer=error_rate(reference, hypotheses[row], jiwer.wer),
                hypothesis=hypotheses[row],
                reference=reference,
                duration=duration,
                chars_per_second=characters / duration if duration else 0.0,
                level_db=float(store.levels_db[index]),
            )
        )
    return rows


def ctc_losses(
    model: torch.nn.Module, logits: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, blank: int
) -> torch.Tensor:
    """Each utterance's CTC loss (summed over its frames), as the model's own loss computes it.

    Not reduced and not zeroed: a transcript longer than the audio's frames allow gets inf.
    """
    frames = output_frames(model, mask)
    targets = labels >= 0
    log_probs = torch.nn.functional.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
    with torch.backends.cudnn.flags(enabled=False):
        return torch.nn.functional.ctc_loss(
            log_probs,
            labels.masked_select(targets),
            frames,
            targets.sum(-1),
            blank=blank,
            reduction="none",
            zero_infinity=False,
        ).cpu()


def error_rate(reference: str, hypothesis: str, measure: Callable[[str, str], Any]) -> float:
    """jiwer's CER or WER of one pair; an empty reference scores 1.0 for any hypothesis, else 0.0."""
    if not reference.strip():
        return float(bool(hypothesis.strip()))
    return float(measure(reference, hypothesis))


def is_score_header(header: list[str]) -> bool:
    return header == [f.name for f in fields(UtteranceScore)]


def write_table(rows: list[UtteranceScore], out: Path) -> None:
    """CSV, written atomically; floats with 6 significant digits, inf spelled `inf`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([f.name for f in fields(UtteranceScore)])
    for row in rows:
        writer.writerow([format_cell(value) for value in astuple(row)])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, buffer.getvalue().encode("utf-8"))


def format_cell(value: object) -> object:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.6g}"
    return value
