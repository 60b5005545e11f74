"""From a store to padded batches: a lazy Dataset, the collator and the DataLoader.

The Dataset opens the store where it is built (for its length and the checks) and again, lazily,
in each DataLoader worker: forked or spawned workers each read with their own chunk cache, and
nothing large is pickled. Batches come from featstore's length-grouped sampler, so they pad
little and read each chunk about once per epoch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Wav2Vec2Processor

from featstore import FeatStore, open_store
from featstore.sampler import DurationBucketSampler
from trainer.config import TextOptions
from trainer.stores import open_checked
from trainer.vocab import encode_labels

IGNORE_INDEX = -100  # label padding that CTC loss skips


class StoreDataset(Dataset[dict[str, Any]]):
    """Utterance `i` as {"index", "audio" (float32), "labels" (token ids; empty without text)}."""

    def __init__(self, path: str | Path, processor: Wav2Vec2Processor, text: TextOptions) -> None:
        self.path = path  # a local path or URL: what each worker process reopens
        self.processor = processor
        self.text = text
        store = open_checked(path)
        self._length = len(store)
        self._store: FeatStore | None = store
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> dict[str, Any]:
        store = self.store
        text = self.text.normalize(store.texts[i])
        return {"index": i, "audio": store.audio(i), "labels": encode_labels(self.processor, text) if text else []}

    @property
    def store(self) -> FeatStore:
        """This process's own reader (reopened after a fork so workers share no cache)."""
        if self._store is None or self._pid != os.getpid():
            self._store, self._pid = open_store(self.path), os.getpid()
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad audio with zeros and labels with -100; the attention mask marks real samples.

    Zero padding matches Wav2Vec2FeatureExtractor's padding_value for normalized audio.
    """
    longest = max(item["audio"].size for item in items)
    longest_label = max(len(item["labels"]) for item in items)
    audio = np.zeros((len(items), longest), dtype=np.float32)
    mask = np.zeros((len(items), longest), dtype=np.int64)
    labels = np.full((len(items), longest_label), IGNORE_INDEX, dtype=np.int64)
    for row, item in enumerate(items):
        n = item["audio"].size
        audio[row, :n] = item["audio"]
        mask[row, :n] = 1
        labels[row, : len(item["labels"])] = item["labels"]
    return {
        "input_values": torch.from_numpy(audio),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(labels),
        "indices": torch.tensor([item["index"] for item in items], dtype=torch.int64),
    }


def make_loader(dataset: StoreDataset, sampler: DurationBucketSampler, workers: int) -> DataLoader[dict[str, Any]]:
    """A DataLoader over `sampler`'s batches; worker processes open the store themselves."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        persistent_workers=False,
        # Its own generator, so creating an iterator never draws from the global torch RNG
        # (that would make a resumed run's dropout differ from an uninterrupted one).
        generator=torch.Generator().manual_seed(0),
    )
