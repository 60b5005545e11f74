"""The peer's data path for the loader benchmark: a Lhotse Shar cut set of the store's utterances.

What a user would pick instead of featstore + trainer: Lhotse Shar (cuts.NNNNNN.jsonl.gz +
recording.NNNNNN.tar of FLAC, Lhotse's recommended lossless audio field), read back with
`CutSet.from_shar`, batched by `DynamicBucketingSampler` at the same max batch duration, and
collated by `K2SpeechRecognitionDataset` with the `AudioSamples` input strategy: Lhotse's ASR
dataset, which decodes the cuts' audio and yields it zero-padded (B, T) float32 with each
supervision's text and sample count. The FLAC holds the store's own int16 samples (lossless);
an input transform in the worker normalizes each row to zero mean and unit variance, as the
notebook's feature extractor and featstore's ingest do, so all paths deliver the same audio.

The map-style form is used (sampler in the main process,
`DataLoader(dataset, sampler=sampler, batch_size=None)`), as `K2SpeechRecognitionDataset`'s
docstring says, so the sampler runs where ours and the notebook's do. Lhotse's other form,
`IterableDatasetWrapper` (a sampler in each worker), is not measured.

Lhotse is used by this benchmark only; neither package depends on it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import soundfile
import torch

SHARD_SIZE = 100  # cuts per Shar shard, written one cut at a time
IGNORE_INDEX = -100


def store_cuts(store: Any) -> Iterator[Any]:
    """The store's utterances one at a time as Lhotse cuts with in-memory 16-bit WAV audio
    (the stored int16 samples, exactly)."""
    from lhotse import MonoCut, Recording, SupervisionSegment

    for i in range(len(store)):
        wav = io.BytesIO()
        soundfile.write(wav, store.raw_audio(i), store.sample_rate, format="WAV", subtype="PCM_16")
        recording = Recording.from_bytes(wav.getvalue(), recording_id=f"u{i:07d}")
        supervision = SupervisionSegment(
            id=recording.id, recording_id=recording.id, start=0.0, duration=recording.duration, text=store.texts[i]
        )
        yield MonoCut(
            id=recording.id,
            start=0.0,
            duration=recording.duration,
            channel=0,
            recording=recording,
            supervisions=[supervision],
        )


def build_shar(store_path: str, shar_dir: Path) -> dict[str, Any]:
    """Write the store's utterances as a Shar cut set with FLAC audio, cut by cut (bounded memory)."""
    import time

    from lhotse.shar import SharWriter

    import featstore

    store = featstore.open_store(store_path)
    shar_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with SharWriter(str(shar_dir), fields={"recording": "flac"}, shard_size=SHARD_SIZE) as writer:
        for cut in store_cuts(store):
            writer.write(cut)
    size = sum(f.stat().st_size for f in shar_dir.rglob("*") if f.is_file())
    return {"write_shar_s": time.perf_counter() - t0, "shar_bytes": size, "cuts": len(store)}


class NormalizeRows:
    """Zero mean, unit variance over each row's real samples, padding left at 0.0
    (Wav2Vec2FeatureExtractor's do_normalize, epsilon 1e-7); a Lhotse input transform."""

    def __call__(self, inputs: torch.Tensor, supervision_segments: torch.Tensor) -> torch.Tensor:
        for row, _start, length in supervision_segments.tolist():
            real = inputs[row, :length]
            inputs[row, :length] = (real - real.mean()) / torch.sqrt(real.var(correction=0) + 1e-7)
        return inputs


def make_lhotse_loader(shar_dir: Path, seconds: float, workers: int) -> torch.utils.data.DataLoader[Any]:
    """Shar cuts -> DynamicBucketingSampler(max_duration=seconds) -> K2SpeechRecognitionDataset."""
    from lhotse import CutSet
    from lhotse.dataset import DynamicBucketingSampler, K2SpeechRecognitionDataset
    from lhotse.dataset.input_strategies import AudioSamples

    cuts = CutSet.from_shar(in_dir=str(shar_dir))
    sampler = DynamicBucketingSampler(cuts, max_duration=seconds, shuffle=True, seed=0)
    dataset = K2SpeechRecognitionDataset(input_strategy=AudioSamples(), input_transforms=[NormalizeRows()])
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers)


def model_inputs(batch: dict[str, Any], labels_by_text: dict[str, list[int]]) -> tuple[dict[str, Any], int]:
    """The same model-ready tensors as the other paths (audio, bool mask, labels padded with -100)
    from a Lhotse ASR batch (one supervision per cut, in row order), and its real samples."""
    audio = batch["inputs"]
    lengths = batch["supervisions"]["num_samples"].tolist()
    mask = torch.ones(audio.shape, dtype=torch.bool)
    for row, length in enumerate(lengths):
        mask[row, length:] = False
    ids = [labels_by_text[text] for text in batch["supervisions"]["text"]]
    labels = torch.full((len(ids), max(len(i) for i in ids)), IGNORE_INDEX, dtype=torch.int64)
    for row, label in enumerate(ids):
        labels[row, : len(label)] = torch.tensor(label, dtype=torch.int64)
    return {"input_values": audio, "attention_mask": mask, "labels": labels}, int(sum(lengths))
