"""Shared by fit, evaluate and transcribe: pick a device, run greedy CTC decoding, score text."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import jiwer
import torch
from transformers import Wav2Vec2Processor

from trainer.data import Batch, model_inputs
from trainer.errors import TrainerError
from trainer.vocab import decode_labels, decode_predictions


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """cuda (this process's GPU under torchrun), then mps, then cpu; or what `name` says."""
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainerError("--device cuda: this machine's torch sees no CUDA GPU (a CPU build, or no driver)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise TrainerError("--device mps: this machine's torch has no Apple GPU (MPS) backend")
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class Transcript:
    index: int
    reference: str
    prediction: str


@torch.no_grad()
def transcribe_batches(
    model: torch.nn.Module, batches: Iterable[Batch], processor: Wav2Vec2Processor, device: torch.device
) -> list[Transcript]:
    """Greedy CTC transcripts (argmax, merge repeats, drop blanks), in the order of `batches`."""
    was_training = model.training
    model.eval()
    results: list[Transcript] = []
    for batch in batches:
        inputs = model_inputs(batch, device, labels=False)
        logits = model(**inputs).logits
        predictions = decode_predictions(processor, greedy_ids(model, logits, inputs["attention_mask"]))
        for index, labels, prediction in zip(batch.indices.tolist(), batch.labels.tolist(), predictions, strict=True):
            results.append(Transcript(index, decode_labels(processor, labels), prediction))
    model.train(was_training)
    return results


def output_frames(model: torch.nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """Each row's count of output frames, from its (rows, samples) attention mask."""
    return model._get_feat_extract_output_lengths(mask.sum(-1)).to(torch.long)  # type: ignore[operator]


def greedy_ids(model: torch.nn.Module, logits: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Each row's argmax token ids over its own frames only.

    The frames past a padded row's audio were never trained (the CTC loss stops at each row's
    length), and their argmax can be a letter: decoded, they would add text that depends on
    which longer utterance shared the batch.
    """
    ids = logits.argmax(dim=-1).cpu().tolist()
    return [row[:frames] for row, frames in zip(ids, output_frames(model, mask).tolist(), strict=True)]


@dataclass(frozen=True)
class Scores:
    wer: float
    cer: float
    utterances: int


def score(transcripts: list[Transcript]) -> Scores:
    """Corpus-level WER and CER over the transcripts that have a reference."""
    scored = [t for t in transcripts if t.reference]
    if not scored:
        return Scores(wer=float("nan"), cer=float("nan"), utterances=0)
    references = [t.reference for t in scored]
    predictions = [t.prediction for t in scored]
    return Scores(
        wer=float(jiwer.process_words(references, predictions).wer),
        cer=float(jiwer.process_characters(references, predictions).cer),
        utterances=len(scored),
    )
