"""The data path: lazy Dataset, featstore's sampler through a DataLoader, and the collator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featstore import open_store
from trainer import handoff
from trainer.config import BatchOptions, TextOptions
from trainer.data import IGNORE_INDEX, Item, StoreDataset, collate, make_loader, model_inputs
from trainer.model import build_tiny_random
from trainer.vocab import PAD, build_processor, build_vocab, decode_labels, encode_labels


@pytest.fixture(scope="module")
def processor(stores, tmp_path_factory):
    return build_processor(build_vocab(open_store(stores.train).texts), tmp_path_factory.mktemp("processor"))


@pytest.fixture(scope="module")
def dataset(stores, processor) -> StoreDataset:
    return StoreDataset(stores.train, processor, TextOptions())


def _indices(loader) -> list[list[int]]:
    return [batch.indices.tolist() for batch in loader]


def test_collator_pads_int16_audio_with_zeros_and_labels_with_ignore_index() -> None:
    items = [
        Item(0, np.array([1, 2, 3, 4, 5], np.int16), 0.5, np.array([1, 2, 3])),
        Item(7, np.array([-2, 2, 6], np.int16), 0.25, np.array([4])),
    ]
    batch = collate(items)
    assert batch.audio.dtype == torch.int16
    assert batch.audio.tolist() == [[1, 2, 3, 4, 5], [-2, 2, 6, 0, 0]]
    assert batch.scales.tolist() == [0.5, 0.25] and batch.lengths.tolist() == [5, 3]
    assert batch.labels.tolist() == [[1, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch.indices.tolist() == [0, 7]
    inputs = model_inputs(batch, "cpu")
    assert inputs["input_values"].tolist() == [[0.5, 1, 1.5, 2, 2.5], [-0.5, 0.5, 1.5, 0, 0]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


def test_batches_carry_the_stores_audio_and_text(stores, dataset: StoreDataset, processor) -> None:
    store = open_store(stores.train)
    sampler = BatchOptions(max_batch_seconds=20.0, batch_size=None).sampler(store, seed=3)
    batch = next(iter(make_loader(dataset, sampler, workers=0)))
    for row, index in enumerate(batch.indices.tolist()):
        assert int(batch.lengths[row]) == store.lengths[index]
        assert decode_labels(processor, batch.labels[row].tolist()) == store.texts[index]
        text = TextOptions().normalize(store.texts[index])
        assert batch.labels[row][batch.labels[row] != IGNORE_INDEX].tolist() == encode_labels(processor, text)
    assert batch.audio.numel() <= 20.0 * store.sample_rate


def test_model_inputs_equal_the_float_audio_and_mask_padded_the_old_way(stores, dataset: StoreDataset) -> None:
    """Against what the loader used to send: store.audio (float32) padded with zeros, an int64 mask."""
    store = open_store(stores.train)
    sampler = BatchOptions(max_batch_seconds=20.0, batch_size=None).sampler(store, seed=3)
    batch = next(iter(make_loader(dataset, sampler, workers=1)))
    indices = batch.indices.tolist()
    longest = max(int(store.lengths[i]) for i in indices)
    audio = torch.zeros(len(indices), longest)
    mask = torch.zeros(len(indices), longest, dtype=torch.int64)
    for row, i in enumerate(indices):
        audio[row, : store.lengths[i]] = torch.from_numpy(store.audio(i))
        mask[row, : store.lengths[i]] = 1
    inputs = model_inputs(batch, "cpu")
    assert inputs["input_values"].dtype == torch.float32
    assert torch.equal(inputs["input_values"], audio)
    assert torch.equal(inputs["attention_mask"].long(), mask)

    vocab = build_vocab(store.texts)
    model = build_tiny_random(len(vocab), vocab[PAD], seed=0).eval()
    with torch.no_grad():
        new = model(**inputs)
        old = model(input_values=audio, attention_mask=mask, labels=inputs["labels"])
    assert torch.equal(new.logits, old.logits)
    assert torch.equal(new.loss, old.loss)


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
    resumed.load_state_dict({"epoch": 3, "batches_trained": 5, "seed": 2})
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
    assert np.array_equal(clone[3].audio, dataset[3].audio)


def _assert_batch_is_the_stores_audio(store, batch) -> None:
    for row, index in enumerate(batch.indices.tolist()):
        length = int(store.lengths[index])
        assert np.array_equal(batch.audio[row, :length].numpy(), store.raw_audio(index))
        assert not batch.audio[row, length:].any()  # a reused buffer's old samples never show as padding


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_reuse_a_few_shared_buffers_and_send_each_once(stores, dataset: StoreDataset, workers: int) -> None:
    store = open_store(stores.train)
    loader = make_loader(dataset, BatchOptions(batch_size=3).sampler(store, seed=6), workers=workers)
    for epoch in range(2):  # each iteration starts new workers with a new table of buffers
        leases = []
        for batch in loader:
            _assert_batch_is_the_stores_audio(store, batch)
            leases.append(batch.lease)
            model_inputs(batch, "cpu")  # copies the audio out and gives the buffer back
        assert len(leases) >= 12 and all(lease is not None for lease in leases), epoch
        buffers = {(lease.worker, lease.index) for lease in leases}
        sent = [lease for lease in leases if lease.new_buffer is not None]
        assert len(buffers) <= workers * handoff.BUFFERS_PER_WORKER
        assert len(sent) <= len(leases) // 3  # once per buffer, again only when a batch outgrows it
        assert len({lease.table for lease in leases}) == 1


def test_batches_held_without_model_inputs_are_never_overwritten(stores, dataset: StoreDataset) -> None:
    """A consumer that keeps every batch: once a worker's buffers are all taken it sends fresh tensors."""
    store = open_store(stores.train)
    loader = make_loader(dataset, BatchOptions(batch_size=3).sampler(store, seed=6), workers=1)
    held = list(loader)
    assert sum(batch.lease is not None for batch in held) == handoff.BUFFERS_PER_WORKER < len(held)
    for batch in held:
        _assert_batch_is_the_stores_audio(store, batch)


def test_an_iteration_left_early_leaves_the_next_one_correct(stores, dataset: StoreDataset) -> None:
    store = open_store(stores.train)
    loader = make_loader(dataset, BatchOptions(batch_size=3).sampler(store, seed=6), workers=1)
    first = iter(loader)
    kept = next(first)  # never released, its iterator abandoned mid-epoch
    for batch in loader:
        _assert_batch_is_the_stores_audio(store, batch)
        assert batch.lease is not None and batch.lease.table != kept.lease.table
        model_inputs(batch, "cpu")
    _assert_batch_is_the_stores_audio(store, kept)
    model_inputs(kept, "cpu")  # releasing into the old table touches nothing of the new one


def test_a_received_batch_pickles_with_its_samples_not_its_lease(stores, dataset: StoreDataset) -> None:
    import pickle

    store = open_store(stores.train)
    batch = next(iter(make_loader(dataset, BatchOptions(batch_size=3).sampler(store, seed=6), workers=1)))
    assert batch.lease is not None
    copy = pickle.loads(pickle.dumps(batch))
    assert copy.lease is None and torch.equal(copy.audio, batch.audio)
    assert copy.audio.untyped_storage().data_ptr() != batch.audio.untyped_storage().data_ptr()
    _assert_batch_is_the_stores_audio(store, copy)


def test_model_inputs_from_two_workers_equal_the_stores_float_audio(stores, dataset: StoreDataset) -> None:
    """What the model gets, checked after the buffer is given back: the copy was made before."""
    store = open_store(stores.train)
    loader = make_loader(dataset, BatchOptions(batch_size=3).sampler(store, seed=8), workers=2)
    for batch in loader:
        inputs = model_inputs(batch, "cpu")
        for row, index in enumerate(batch.indices.tolist()):
            length = int(store.lengths[index])
            assert torch.equal(inputs["input_values"][row, :length], torch.from_numpy(store.audio(index)))
            assert not inputs["input_values"][row, length:].any()


def test_a_batch_given_back_twice_frees_nothing_else(stores, dataset: StoreDataset) -> None:
    store = open_store(stores.train)
    iterator = iter(make_loader(dataset, BatchOptions(batch_size=3).sampler(store, seed=6), workers=1))
    first = next(iterator)
    model_inputs(first, "cpu")
    with pytest.raises(handoff.BatchConsumed):
        model_inputs(first, "cpu")
    # The worker fills the buffer `first` gave back with a later batch, one of these:
    held = [next(iterator) for _ in range(handoff.BUFFERS_PER_WORKER)]
    assert (first.lease.worker, first.lease.index) in {(b.lease.worker, b.lease.index) for b in held}
    handoff.release(first.lease)  # a stray second release
    for batch in held:
        handoff.check_held(batch.lease)  # still theirs: the stray release freed none of them
    for batch in [*iterator, *held]:
        _assert_batch_is_the_stores_audio(store, batch)


def test_persistent_workers_are_refused(stores, dataset: StoreDataset) -> None:
    store = open_store(stores.train)
    with pytest.raises(ValueError, match="persistent_workers"):
        handoff.BufferedLoader(
            dataset,
            buffers=handoff.BatchBuffers(1),
            batch_sampler=BatchOptions(batch_size=3).sampler(store),
            num_workers=1,
            persistent_workers=True,
        )
