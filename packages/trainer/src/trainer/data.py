"""From a store to model inputs: a lazy Dataset, the collator, the DataLoader, `model_inputs`.

The Dataset opens the store where it is built (for its length and the checks) and again, lazily,
in each DataLoader worker: forked or spawned workers each read with their own chunk cache, and
nothing large is pickled. Batches come from featstore's length-grouped sampler, so they pad
little and read each chunk about once per epoch.

Batches stay compact until they reach the model's device: the stored int16 samples with a scale
and a length per row, 2 bytes per sample from a worker and to a GPU (float32 audio plus an int64
mask was 12). `model_inputs` makes the float audio and the mask there, and hands the batch's
shared-memory buffer back to its worker (`trainer.handoff`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from transformers import Wav2Vec2Processor

from featstore import FeatStore, open_store
from featstore.sampler import DurationBucketSampler
from trainer.augment import Augmenter, SpeedAwareSampler, SpeedChangedDurations
from trainer.config import BatchOptions, TextOptions
from trainer.handoff import BatchBuffers, BufferedLoader, Lease, check_held, leased_audio, release
from trainer.stores import open_checked
from trainer.vocab import encode_texts

IGNORE_INDEX = -100  # label padding that CTC loss skips


@dataclass(frozen=True, slots=True)
class Item:
    """One utterance as stored: float audio is `audio * scale` (exactly `FeatStore.audio`)."""

    index: int
    audio: np.ndarray  # int16
    scale: float
    labels: np.ndarray  # int64 token ids; empty without text


class StoreDataset(Dataset[Item]):
    """The store's utterances `indices[0], indices[1], ...` (all of them by default) as `Item`s.

    Label ids are encoded once here, for every utterance, rather than per item every epoch.
    With an `augmenter`, items carry that epoch's augmented audio (`set_epoch`); their `index`
    is always the store's.
    """

    def __init__(
        self,
        path: str | Path,
        processor: Wav2Vec2Processor,
        text: TextOptions,
        indices: np.ndarray | None = None,
        augmenter: Augmenter | None = None,
    ) -> None:
        self.path = path  # a local path or URL: what each worker process reopens
        store = open_checked(path)
        self.indices = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
        self._labels, self._label_offsets = encode_texts(processor, [text.normalize(t) for t in store.texts])
        self._store: FeatStore | None = store
        self._pid = os.getpid()
        self.augmenter = augmenter
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation items get. Set it before iterating a DataLoader: its
        workers (not persistent) take their copy of the dataset when the iteration starts."""
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, position: int) -> Item:
        i = int(self.indices[position])
        store = self.store
        labels = self._labels[self._label_offsets[i] : self._label_offsets[i + 1]]
        samples, scale = store.raw_audio(i), float(store.scales[i])
        if self.augmenter is not None:
            samples, scale = self.augmenter(i, samples, scale, self.epoch)
        return Item(i, samples, scale, labels)

    @property
    def store(self) -> FeatStore:
        """This process's own reader (reopened after a fork so workers share no cache)."""
        if self._store is None or self._pid != os.getpid():
            self._store, self._pid = open_store(self.path), os.getpid()
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}


@dataclass(frozen=True, slots=True)
class Batch:
    """A compact batch, as a worker sends it; `model_inputs` makes the model's inputs from it
    (once: it gives `audio`'s buffer back to the worker that filled it).

    Only `audio` is a tensor. From a worker it travels as its shape when it lies in a buffer the
    main process already maps (`trainer.handoff`); the small numpy arrays travel in the pickle.
    """

    audio: torch.Tensor  # int16 [rows, longest]: the stored samples, padded with zeros
    scales: np.ndarray  # float32 [rows]: float audio = audio * scale
    lengths: np.ndarray  # int64 [rows]: real samples per row
    labels: np.ndarray  # int64 [rows, longest labels]: token ids, padded with IGNORE_INDEX
    indices: np.ndarray  # int64 [rows]: the utterances' indices in the store
    lease: Lease | None = None  # the worker buffer `audio` lies in, if any

    def __reduce__(self) -> tuple[Any, ...]:
        if self.lease is None or get_worker_info() is None:  # outside its worker: a copy of leased samples
            audio = self.audio if self.lease is None else self.audio.clone()
            return (Batch, (audio, self.scales, self.lengths, self.labels, self.indices))
        shape = tuple(self.audio.shape)
        return (_received_batch, (shape, self.scales, self.lengths, self.labels, self.indices, self.lease))


def _received_batch(
    shape: tuple[int, int],
    scales: np.ndarray,
    lengths: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    lease: Lease,
) -> Batch:
    """A worker's batch as the main process unpickles it: its audio lies in a buffer mapped there."""
    return Batch(leased_audio(lease, shape), scales, lengths, labels, indices, lease)


def collate(items: list[Item], buffers: BatchBuffers | None = None) -> Batch:
    """Pad the items' int16 audio with zeros and their labels with -100 (in a worker: into a reused buffer)."""
    lengths = np.array([item.audio.size for item in items], dtype=np.int64)
    rows, longest = len(items), int(lengths.max())
    if buffers is None:
        audio, lease = torch.empty((rows, longest), dtype=torch.int16), None
    else:
        audio, lease = buffers.take(rows, longest)
    try:
        samples = audio.numpy()
        labels = np.full((rows, max(item.labels.size for item in items)), IGNORE_INDEX, dtype=np.int64)
        for row, item in enumerate(items):
            samples[row, : item.audio.size] = item.audio
            samples[row, item.audio.size :] = 0
            labels[row, : item.labels.size] = item.labels
    except BaseException:
        if buffers is not None and lease is not None:
            buffers.give_back(lease)  # this batch is never sent: its buffer is free again
        raise
    return Batch(
        audio=audio,
        scales=np.array([item.scale for item in items], dtype=np.float32),
        lengths=lengths,
        labels=labels,
        indices=np.array([item.index for item in items], dtype=np.int64),
        lease=lease,
    )


def model_inputs(batch: Batch, device: torch.device | str, labels: bool = True) -> dict[str, torch.Tensor]:
    """The model's keyword arguments for `batch`, made on `device`.

    The int16 samples move first, so 2 bytes per sample go to an accelerator. Padding stays 0.0
    (Wav2Vec2FeatureExtractor's padding value for normalized audio). The mask is bool, which
    Wav2Vec2ForCTC takes like 0/1 integers (it only sums it and marks positions with it).
    Once per batch: it gives a worker's buffer back, and raises `BatchConsumed` when called again.
    """
    check_held(batch.lease)
    audio = batch.audio.to(device)
    scales = torch.from_numpy(batch.scales).to(device)
    mask = torch.ones(audio.shape, dtype=torch.bool, device=audio.device)
    for row, length in enumerate(batch.lengths.tolist()):
        mask[row, length:] = False  # a fill per row: on a CPU, 4x faster than comparing each sample's position
    inputs = {"input_values": audio.to(torch.float32).mul_(scales[:, None]), "attention_mask": mask}
    release(batch.lease)  # the samples are copied out: the worker may refill this buffer
    if labels:
        inputs["labels"] = torch.from_numpy(batch.labels).to(device)
    return inputs


def training_sampler(
    store: FeatStore, batch: BatchOptions, indices: np.ndarray, augmenter: Augmenter | None, **options: Any
) -> DurationBucketSampler:
    """featstore's length-grouped sampler over the store's utterances `indices` (what a
    `StoreDataset` with those indices holds): it yields positions into `indices`.

    Under speed perturbation it cuts each epoch's batches by that epoch's changed durations.
    """
    layout = {
        "buckets": store.buckets[indices],
        "positions": store.offsets[indices],
        "groups": store.shard_codes[indices],
        "sample_rate": store.sample_rate,
        **batch.sizing(),
        **options,
    }
    if augmenter is not None and augmenter.options.changes_speed:
        durations = SpeedChangedDurations(augmenter, store.lengths[indices], indices)
        speeds = len(set(augmenter.options.speeds))
        return SpeedAwareSampler(store.durations[indices], epoch_durations=durations, speeds=speeds, **layout)
    return DurationBucketSampler(store.durations[indices], **layout)


def make_loader(dataset: StoreDataset, sampler: DurationBucketSampler, workers: int) -> DataLoader[Item]:
    """A DataLoader of `Batch`es over `sampler`'s batches; worker processes open the store themselves
    and send the audio in buffers they reuse (`trainer.handoff`)."""
    buffers = BatchBuffers(workers)
    return BufferedLoader(
        dataset,
        buffers=buffers,
        batch_sampler=sampler,
        collate_fn=partial(collate, buffers=buffers),
        num_workers=workers,
        persistent_workers=False,
        # Its own generator, so creating an iterator never draws from the global torch RNG
        # (that would make a resumed run's dropout differ from an uninterrupted one).
        generator=torch.Generator().manual_seed(0),
    )
