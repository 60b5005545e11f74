"""Reader benchmark: audio-seconds delivered per second by one process reading a featstore store.

The trainer reads length-grouped batches from `featstore.sampler.for_store(store,
max_batch_seconds=100)`; issue 2 asks for >= 15,000 audio-s/s per process in that pattern, so
training never waits for data. Measured here, one process, one epoch each:
  - grouped:      the trainer's pattern, `store.audio(i)` (normalized float32) for every index;
  - grouped raw:  the same batches, `store.raw_audio(i)` (the stored int16, no conversion);
  - naive:        random order, one utterance at a time (what a plain shuffled Dataset does).
Also: decompression amplification (samples decompressed / samples delivered, counted in the
reader's chunk cache; 1.0 = every chunk decompressed once per epoch) and the process's RSS
over the epoch (it must stay flat: the cache is bounded).

    python bench/reader.py                  # builds a 2.8 h store if needed
    python bench/reader.py --store feats.zarr
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from featstore import FeatStore, open_store
from featstore.sampler import for_store

from corpus import CACHE_ROOT, ensure_corpus, source_fingerprint

BENCH = Path(__file__).resolve().parent
MB = 1e6


def build_store(shards: int, clips: int, words: tuple[int, int]) -> Path:
    """A store from the cached benchmark corpus, ingested once (per featstore version) with the CLI."""
    corpus = ensure_corpus(shards, clips, words)
    code = source_fingerprint()["featstore_src_sha256"]  # a store per featstore version: the index may change
    store = CACHE_ROOT / f"reader_{corpus.root.name}_{code}.zarr"
    if not store.exists():
        featstore = Path(sys.executable).with_name("featstore")
        subprocess.run(
            [
                str(featstore),
                "ingest",
                str(corpus.split_dir),
                "--out",
                str(store),
                "--workers",
                "2",
                "--dashboard-address",
                "127.0.0.1:0",
                "--no-progress",
            ],
            check=True,
        )
    return store


def amplification_floor(store: FeatStore) -> float:
    """Samples decompressed if every chunk is decompressed exactly once, over samples stored.

    zarr stores an array's last chunk padded to the full chunk size, so a store with many small
    (shard, duration bucket) arrays decompresses padding too: this is the best an epoch can do.
    """
    chunk = store.info.chunk_samples
    keys = store.shard_codes.astype(np.int64) * 1000 + store.buckets
    total = 0
    for key in np.unique(keys):
        ends = store.offsets[keys == key] + store.lengths[keys == key]
        total += -(-int(ends.max()) // chunk) * chunk
    return total / float(store.lengths.sum())


def measure(
    name: str, store_path: Path, order: Iterable[list[int]], read: Callable[[FeatStore, int], np.ndarray]
) -> dict[str, Any]:
    """Read every index of `order` (a list of batches) from a freshly opened store."""
    gc.collect()  # drop the previous measurement's store and cache
    store = open_store(store_path)
    decoded = [0]
    put = store._cache.put

    def counting_put(key: tuple[int, int, int], value: np.ndarray) -> None:
        decoded[0] += value.size
        put(key, value)

    store._cache.put = counting_put
    process = psutil.Process()
    batches = list(order)
    rss: list[int] = []
    delivered = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for b, batch in enumerate(batches):
        for i in batch:
            delivered += read(store, i).size
        if b % max(1, len(batches) // 50) == 0:
            rss.append(process.memory_info().rss)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    rss.append(process.memory_info().rss)
    chunk_samples = store.info.chunk_samples
    settled = rss[len(rss) // 10 :]  # after the cache has filled
    return {
        "pattern": name,
        "utterances": sum(len(b) for b in batches),
        "batches": len(batches),
        "audio_s": round(delivered / store.sample_rate, 1),
        "wall_s": round(wall, 3),
        "audio_s_per_s": round(delivered / store.sample_rate / wall),
        "cpu_s": round(cpu, 3),
        "audio_s_per_cpu_s": round(delivered / store.sample_rate / cpu),
        "loadavg_1m": round(__import__("os").getloadavg()[0], 2),
        "amplification": round(decoded[0] / delivered, 3),
        "amplification_misses_x_chunk": round(store._cache.misses * chunk_samples / delivered, 3),
        "chunk_misses": store._cache.misses,
        "rss_start_mb": round(rss[0] / MB, 1),
        "rss_max_mb": round(max(rss) / MB, 1),
        "rss_end_mb": round(rss[-1] / MB, 1),
        "rss_growth_after_10pct_mb": round((max(settled) - settled[0]) / MB, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="an existing store (default: build one from the bench corpus)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--clips", type=int, default=220)
    parser.add_argument("--words", type=int, nargs=2, default=(6, 14))
    parser.add_argument("--max-batch-seconds", type=float, default=100.0)
    parser.add_argument("--epochs", type=int, default=3, help="grouped epochs to time (each a new sampler epoch)")
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "reader.json")
    args = parser.parse_args()

    store_path = args.store or build_store(args.shards, args.clips, tuple(args.words))
    store = open_store(store_path)
    hours = float(store.durations.sum()) / 3600
    print(
        f"store {store_path}: {len(store)} utterances, {hours:.2f} h, chunk {store.info.chunk_samples} samples",
        flush=True,
    )
    floor = amplification_floor(store)
    print(f"amplification floor of this store (every chunk, zarr-padded to full size, decompressed once): {floor:.3f}")
    rows = []
    for epoch in range(args.epochs):
        sampler = for_store(store, max_batch_seconds=args.max_batch_seconds, seed=0)
        sampler.set_epoch(epoch)
        rows.append(
            measure(f"grouped float32, epoch {epoch}", store_path, list(sampler), FeatStore.audio) | {"epoch": epoch}
        )
        print(rows[-1], flush=True)
    sampler = for_store(store, max_batch_seconds=args.max_batch_seconds, seed=0)
    rows.append(measure("grouped int16 (raw_audio)", store_path, list(sampler), FeatStore.raw_audio))
    print(rows[-1], flush=True)
    permutation = np.random.default_rng(0).permutation(len(store))
    rows.append(
        measure("naive: random order, one at a time", store_path, [[int(i)] for i in permutation], FeatStore.audio)
    )
    print(rows[-1], flush=True)

    grouped = [r for r in rows if r["pattern"].startswith("grouped float32")]
    worst = min(r["audio_s_per_s"] for r in grouped)
    median = sorted(r["audio_s_per_s"] for r in grouped)[len(grouped) // 2]
    per_cpu = min(r["audio_s_per_cpu_s"] for r in grouped)
    print()
    columns = [
        "pattern",
        "audio_s",
        "wall_s",
        "audio_s_per_s",
        "cpu_s",
        "audio_s_per_cpu_s",
        "loadavg_1m",
        "amplification",
        "rss_max_mb",
        "rss_growth_after_10pct_mb",
    ]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))
    passed = worst >= 15_000
    print(
        f"\n{'PASS' if passed else 'FAIL'}  grouped float32 >= 15,000 audio-s/s per process: "
        f"{worst} (slowest epoch; median {median})"
    )
    print(f"info  grouped float32 per CPU-second of this process (slowest epoch): {per_cpu}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                "code": source_fingerprint(),
                "store": str(store_path),
                "utterances": len(store),
                "audio_h": hours,
                "chunk_samples": store.info.chunk_samples,
                "amplification_floor": floor,
                "max_batch_seconds": args.max_batch_seconds,
                "rows": rows,
                "target_audio_s_per_s": 15_000,
                "worst_grouped": worst,
                "median_grouped": median,
                "worst_grouped_per_cpu_s": per_cpu,
                "pass": passed,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
