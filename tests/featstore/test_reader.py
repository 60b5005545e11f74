"""The reader: index without audio, lazy chunk reads, cache bound, fork safety, the sampler."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from featstore import FeatStore, FeatstoreError, open_store
from featstore.audio import QuantizedClip, SourceLevels
from featstore.chunks import CHUNK_SAMPLES
from featstore.index import CompleteShards, consolidate_index
from featstore.ingest import IngestSummary
from featstore.layout import IngestSettings, open_root
from featstore.newstore import create_store
from featstore.sampler import DurationBucketSampler, for_store
from featstore.shardwriter import ShardWriter
from featstore.storage import locate


def test_len_durations_and_texts_come_from_the_index(ingested: tuple[Path, IngestSummary]) -> None:
    store = open_store(ingested[0], cache_bytes=0)
    assert len(store) == 29 == len(store.texts) == store.durations.size
    assert store._cache.misses == 0  # nothing decoded yet
    assert all(0.5 <= d <= 30 for d in store.durations)


def test_item_access_returns_normalized_float32_and_its_record(ingested: tuple[Path, IngestSummary]) -> None:
    store = open_store(ingested[0])
    utterance = store[3]
    assert utterance.audio.dtype == np.float32
    assert utterance.audio.size == store.lengths[3]
    assert abs(float(utterance.audio.mean())) < 1e-3 and abs(float(utterance.audio.std()) - 1) < 1e-3
    assert utterance.record["text"] == store.texts[3]
    assert len(store[-2:]) == 2
    with pytest.raises(IndexError):
        store[len(store)]


def test_utterances_spanning_chunks_read_back_exactly(tmp_path: Path) -> None:
    import zarr

    create_store(locate(tmp_path / "s.zarr"), IngestSettings(), "test")
    root, _ = open_root(locate(tmp_path / "s.zarr"), mode="r+")
    writer = ShardWriter(locate(tmp_path / "s.zarr"), root, "audio_0", {"size": 1})
    rng = np.random.default_rng(0)
    clips = [rng.integers(-3000, 3000, 20_800 + i, dtype=np.int16) for i in range(30)]  # ~1.3 s: one bucket
    for n, samples in enumerate(clips):
        writer.add(QuantizedClip(samples, 0.5), SourceLevels(-20.0, 0.0), f"clip {n}", {"audio_filepath": f"{n}.webm"})
    writer.finish()
    consolidate_index(locate(tmp_path / "s.zarr"), root, CompleteShards([]))
    store = open_store(tmp_path / "s.zarr")
    spanning = (store.offsets % CHUNK_SAMPLES + store.lengths) > CHUNK_SAMPLES
    assert spanning.sum() >= 2
    for i, samples in enumerate(clips):
        np.testing.assert_array_equal(store.raw_audio(i), samples)
        np.testing.assert_array_equal(store.audio(i), samples.astype(np.float32) * 0.5)
    # The chunks are written without zarr, so check that stock zarr reads the array as written.
    bucket = zarr.open_array(str(tmp_path / "s.zarr"), path=f"shards/audio_0/b{int(store.buckets[0]):02d}", mode="r")
    np.testing.assert_array_equal(bucket[:], np.concatenate(clips))


def test_the_root_index_lists_shards_only_and_records_come_from_shards(ingested: tuple[Path, IngestSummary]) -> None:
    import zarr

    index = zarr.open_group(str(ingested[0]), mode="r")["index"].attrs["featstore_index"]
    assert set(index) == {"shards", "rejects"}  # O(shards): the per-utterance columns live in the shard groups
    assert [entry["clips"] for entry in index["shards"]] == [5, 12, 12]
    store = open_store(ingested[0])
    last = store.record(len(store) - 1)
    first = store.record(0)
    assert last["shard"] == "audio_2" and last["shard_id"] == 2
    assert first["shard"] == "audio_0" and first["shard_id"] == 0


def test_cache_is_bounded(ingested: tuple[Path, IngestSummary]) -> None:
    store = open_store(ingested[0], cache_bytes=1)
    for i in range(len(store)):
        store.audio(i)
    assert len(store._cache._items) == 1


def _checksum_in_child(path: str, indices: list[int]) -> float:
    store = open_store(path)
    return float(sum(store.audio(i).sum() for i in indices))


def test_forked_and_spawned_workers_read_the_same_audio(ingested: tuple[Path, IngestSummary]) -> None:
    store = open_store(ingested[0])
    indices = list(range(len(store)))
    expected = float(sum(store.audio(i).sum() for i in indices))
    for method in ("fork", "spawn"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            results = pool.starmap(
                _checksum_in_child, [(str(ingested[0]), indices[::2]), (str(ingested[0]), indices[1::2])]
            )
        assert sum(results) == pytest.approx(expected, rel=1e-5)


def test_store_sampler_batches_cover_every_utterance_once(ingested: tuple[Path, IngestSummary]) -> None:
    store = open_store(ingested[0])
    sampler = for_store(store, max_batch_seconds=8, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(store)))
    for batch in batches:
        assert len(set(store.buckets[batch])) == 1  # one duration bucket per batch
        assert store.durations[batch].max() * len(batch) <= 8 or len(batch) == 1


def test_sorted_windows_pad_less_and_read_each_chunk_about_once(ingested: tuple[Path, IngestSummary]) -> None:
    durations = np.random.default_rng(0).uniform(2.0, 2.25, 400)  # one 0.25 s store bucket
    layout = {"buckets": np.zeros(400, dtype=int), "positions": np.arange(400), "max_batch_seconds": 20.0}
    sorted_windows = DurationBucketSampler(durations, **layout).plan().padding_fraction  # type: ignore[arg-type]
    storage_order = DurationBucketSampler(durations, sort_window=1, **layout).plan().padding_fraction  # type: ignore[arg-type]
    assert sorted_windows < storage_order / 2
    store = open_store(ingested[0])
    for batch in for_store(store, max_batch_seconds=8, seed=2):
        for i in batch:
            store.raw_audio(i)
    chunks = sum(
        -(-int((store.offsets[part] + store.lengths[part]).max()) // CHUNK_SAMPLES)
        for part in (
            (store.shard_codes == code) & (store.buckets == bucket)
            for code in range(len(store.shard_names))
            for bucket in np.unique(store.buckets)
        )
        if part.any()
    )
    assert store._cache.misses <= 1.2 * chunks  # a window's batches come together, while its chunks are cached


def test_sampler_is_deterministic_per_seed_and_epoch() -> None:
    durations = np.random.default_rng(0).uniform(1, 10, 500)
    first = DurationBucketSampler(durations, max_batch_seconds=60, seed=3)
    second = DurationBucketSampler(durations, max_batch_seconds=60, seed=3)
    assert list(first) == list(second)
    second.set_epoch(1)
    assert list(first) != list(second)
    assert list(DurationBucketSampler(durations, max_batch_seconds=60, seed=4)) != list(first)


def test_sampler_resumes_mid_epoch_from_its_state() -> None:
    durations = np.random.default_rng(1).uniform(1, 10, 300)
    sampler = DurationBucketSampler(durations, batch_size=7, seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2)
    iterator = iter(sampler)
    seen = [next(iterator) for _ in range(12)]  # fetched ahead of training
    sampler.mark_trained(10)
    resumed = DurationBucketSampler(durations, batch_size=7, seed=0)
    resumed.load_state_dict(sampler.state_dict())
    assert seen[:10] + list(resumed) == full


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_split_an_epoch_without_dropping_or_repeating(world_size: int) -> None:
    durations = np.random.default_rng(2).uniform(0.5, 12, 401)
    per_rank = [
        list(DurationBucketSampler(durations, max_batch_seconds=50, seed=1, rank=r, world_size=world_size))
        for r in range(world_size)
    ]
    assert len({len(batches) for batches in per_rank}) == 1  # equal steps: no rank waits forever
    everything = sorted(i for batches in per_rank for b in batches for i in b)
    assert everything == list(range(401))


def test_an_epoch_too_small_for_the_ranks_is_an_error_not_a_hang() -> None:
    sampler = DurationBucketSampler(np.array([1.0, 2.0]), batch_size=1, world_size=3)
    with pytest.raises(FeatstoreError, match="cannot be split evenly across 3 ranks"):
        sampler.rank_batches()


def test_plan_reports_low_padding_for_store_buckets(ingested: tuple[Path, IngestSummary]) -> None:
    store: FeatStore = open_store(ingested[0])
    plan = for_store(store, max_batch_seconds=30).plan()
    assert plan.batches >= 1
    assert 0 <= plan.padding_fraction < 0.2
    assert plan.max_batch_seconds <= 30 or plan.max_batch_size == 1
