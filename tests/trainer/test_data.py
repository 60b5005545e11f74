"""The data path: lazy Dataset, featstore's sampler through a DataLoader, and the collator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featstore import open_store
from trainer.config import BatchOptions, TextOptions
from trainer.data import IGNORE_INDEX, StoreDataset, collate, make_loader
from trainer.vocab import build_processor, build_vocab, decode_labels


@pytest.fixture(scope="module")
def dataset(stores, tmp_path_factory) -> StoreDataset:
    store = open_store(stores.train)
    processor = build_processor(build_vocab(store.texts), tmp_path_factory.mktemp("processor"))
    return StoreDataset(stores.train, processor, TextOptions())


def _indices(loader) -> list[list[int]]:
    return [batch["indices"].tolist() for batch in loader]


def test_collator_pads_audio_with_zeros_and_labels_with_ignore_index() -> None:
    items = [
        {"index": 0, "audio": np.ones(5, np.float32), "labels": [1, 2, 3]},
        {"index": 7, "audio": np.full(3, 2.0, np.float32), "labels": [4]},
    ]
    batch = collate(items)
    assert batch["input_values"].tolist() == [[1, 1, 1, 1, 1], [2, 2, 2, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["indices"].tolist() == [0, 7]


def test_batches_carry_the_stores_audio_and_text(stores, dataset: StoreDataset) -> None:
    store = open_store(stores.train)
    sampler = BatchOptions(max_batch_seconds=20.0, batch_size=None).sampler(store, seed=3)
    batch = next(iter(make_loader(dataset, sampler, workers=0)))
    for row, index in enumerate(batch["indices"].tolist()):
        n = store.lengths[index]
        assert torch.equal(batch["input_values"][row, :n], torch.from_numpy(store.audio(index)))
        assert int(batch["attention_mask"][row].sum()) == n
        assert decode_labels(dataset.processor, batch["labels"][row].tolist()) == store.texts[index]
    assert batch["input_values"].shape[0] * batch["input_values"].shape[1] <= 20.0 * store.sample_rate


def test_workers_open_the_store_themselves_and_deliver_the_same_batches(stores, dataset: StoreDataset) -> None:
    store = open_store(stores.train)
    in_process = _indices(make_loader(dataset, BatchOptions(batch_size=8).sampler(store, seed=1), workers=0))
    with_workers = _indices(make_loader(dataset, BatchOptions(batch_size=8).sampler(store, seed=1), workers=2))
    assert in_process == with_workers
    assert sorted(i for b in in_process for i in b) == list(range(len(store)))


def test_sampler_is_deterministic_for_seed_and_epoch(stores, dataset: StoreDataset) -> None:
    store = open_store(stores.train)
    sampler = BatchOptions(max_batch_seconds=15.0, batch_size=None).sampler(store, seed=5)
    loader = make_loader(dataset, sampler, workers=0)
    sampler.set_epoch(1)
    first = _indices(loader)
    sampler.set_epoch(1)
    assert _indices(loader) == first
    sampler.set_epoch(2)
    assert _indices(loader) != first


def test_sampler_resumes_mid_epoch_from_consumed_batches(stores, dataset: StoreDataset) -> None:
    store = open_store(stores.train)
    sampler = BatchOptions(batch_size=4).sampler(store, seed=2)
    sampler.set_epoch(3)
    full = _indices(make_loader(dataset, sampler, workers=0))
    resumed = BatchOptions(batch_size=4).sampler(store, seed=0)
    # What fit checkpoints: the batches the loop consumed, not what the DataLoader prefetched.
    resumed.load_state_dict({"epoch": 3, "yielded": 5, "seed": 2})
    assert _indices(make_loader(dataset, resumed, workers=1)) == full[5:]


def test_two_ranks_split_an_epoch_without_loss_or_duplication(stores, dataset: StoreDataset) -> None:
    store = open_store(stores.train)
    per_rank = []
    for rank in range(2):
        sampler = BatchOptions(max_batch_seconds=12.0, batch_size=None).sampler(store, seed=4, rank=rank, world_size=2)
        per_rank.append([i for b in _indices(make_loader(dataset, sampler, workers=0)) for i in b])
    assert len(per_rank[0]) + len(per_rank[1]) == len(store)
    assert sorted(per_rank[0] + per_rank[1]) == list(range(len(store)))
    counts = [
        len(BatchOptions(max_batch_seconds=12.0, batch_size=None).sampler(store, seed=4, rank=r, world_size=2))
        for r in range(2)
    ]
    assert counts[0] == counts[1]  # equal steps per rank, or DDP would hang


def test_dataset_pickles_without_its_reader(stores, dataset: StoreDataset) -> None:
    import pickle

    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._store is None
    assert np.array_equal(clone[3]["audio"], dataset[3]["audio"])
