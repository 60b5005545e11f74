"""Padding of speed-perturbed batches against the width of the sampler's sorted windows.

Under speed perturbation a stored duration bucket holds each factor's clips mixed (at 0.9x a
clip lasts 1.11x its stored duration, at 1.1x 0.91x), so featstore's windows of 4 batches,
sorted by the changed durations, still mix them. This lays out a large synthetic store (clips of
uniform stored duration in the store's duration buckets, shards of consecutive clips, each
bucket's samples in 262,144-sample chunks), draws a factor per clip, and reports for each window
width the padding, the batches per epoch and the chunk decodes of one reader with the default
64 MB cache (128 chunks), against the chunks in the store.

    python bench/speed_padding.py --clips 60000 --windows 4 8 12 --seconds 100 200
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict

import numpy as np

from featstore.chunks import CHUNK_SAMPLES, bucket_of
from featstore.reader import DEFAULT_CACHE_BYTES
from featstore.sampler import DurationBucketSampler

SR = 16_000


def layout(clips: int, shards: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Stored durations, buckets, shards and each clip's offset in its shard's bucket array."""
    stored = rng.uniform(2.0, 15.0, clips)
    lengths = np.round(stored * SR).astype(np.int64)
    buckets = np.array([bucket_of(d) for d in stored])
    groups = np.arange(clips) * shards // clips
    offsets = np.zeros(clips, dtype=np.int64)
    order = np.lexsort((np.arange(clips), buckets, groups))
    runs = np.flatnonzero(np.diff(groups[order] * 1000 + buckets[order])) + 1
    for run in np.split(order, runs):
        offsets[run] = np.concatenate([[0], np.cumsum(lengths[run])[:-1]])
    return {"stored": stored, "lengths": lengths, "buckets": buckets, "groups": groups, "offsets": offsets}


def chunks_of(clip: int, store: dict[str, np.ndarray]) -> range:
    start, length = int(store["offsets"][clip]), int(store["lengths"][clip])
    return range(start // CHUNK_SAMPLES, (start + length - 1) // CHUNK_SAMPLES + 1)


def chunk_decodes(batches: list[list[int]], store: dict[str, np.ndarray], cache_chunks: int) -> int:
    """Chunks one reader decodes over the epoch with a least-recently-used cache of `cache_chunks`."""
    cache: OrderedDict[tuple[int, int, int], None] = OrderedDict()
    misses = 0
    for batch in batches:
        for clip in batch:
            for chunk in chunks_of(clip, store):
                key = (int(store["groups"][clip]), int(store["buckets"][clip]), chunk)
                if key in cache:
                    cache.move_to_end(key)
                    continue
                misses += 1
                cache[key] = None
                if len(cache) > cache_chunks:
                    cache.popitem(last=False)
    return misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=60_000)
    parser.add_argument("--shards", type=int, default=27)
    parser.add_argument("--speeds", type=float, nargs="+", default=[0.9, 1.0, 1.1])
    parser.add_argument("--windows", type=int, nargs="+", default=[4, 8, 12])
    parser.add_argument("--seconds", type=float, nargs="+", default=[100.0, 200.0], help="max batch seconds")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    store = layout(args.clips, args.shards, rng)
    changed = store["stored"] / rng.choice(args.speeds, args.clips)
    cache_chunks = DEFAULT_CACHE_BYTES // (CHUNK_SAMPLES * 2)
    stored_chunks = len(
        {(int(store["groups"][c]), int(store["buckets"][c]), k) for c in range(args.clips) for k in chunks_of(c, store)}
    )
    print(json.dumps({"clips": args.clips, "chunks_in_store": stored_chunks, "cache_chunks": cache_chunks}))
    for seconds in args.seconds:
        for window in args.windows:
            options = {
                "buckets": store["buckets"],
                "positions": store["offsets"],
                "groups": store["groups"],
                "max_batch_seconds": seconds,
                "sort_window": window,
                "seed": 0,
            }
            sampler = DurationBucketSampler(changed, **options)
            plain = DurationBucketSampler(store["stored"], **options)
            plan = sampler.plan()
            print(
                json.dumps(
                    {
                        "max_batch_seconds": seconds,
                        "sort_window": window,
                        "padding": round(plan.padding_fraction, 4),
                        "batches": plan.batches,
                        "chunk_decodes": chunk_decodes(sampler.epoch_batches(), store, cache_chunks),
                        "no_speed_change_padding": round(plain.plan().padding_fraction, 4),
                    }
                )
            )


if __name__ == "__main__":
    main()
