"""The index at scale, without audio: synthetic shard columns, so that 1 M utterances cost seconds.

    python bench/index_scale.py [--utterances 1000000] [--shards 150] [--out DIR]

Writes a store (the current format) of `--shards` complete shards holding `--utterances` utterances in all
(index columns, summaries and the root's list; no audio arrays), and measures:
- the time of each per-shard consolidation (what the ingest client does when a shard completes;
  the fastest of 5 runs of it), first shard against last;
- `open_store` time and RSS growth, in a fresh process;
- the unique memory (USS) a forked DataLoader-style worker adds over one epoch of index reads
  (duration, text and bucket of every utterance in a shuffled order, 64 indices at a time, the
  durations computed before the fork as the trainer's sampler does), from psutil.
Format 1 is not measured here: its numbers are the issue's (see docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import zarr

from featstore.chunks import SHARDS_GROUP
from featstore.columns import write_columns
from featstore.index import CompleteShards, consolidate_index, record_completed
from featstore.layout import IngestSettings, open_root, set_attribute
from featstore.newstore import create_store
from featstore.shardmeta import SHARD_KEY, ShardSummary, read_shard_summary
from featstore.storage import Location, locate

SYLLABLES = [c + v for c in "bcdfghjkmnprstvwyz" for v in "aeiou"]


def vocabulary(rng: np.random.Generator, words: int = 20_000) -> np.ndarray:
    """Made-up words of 2-5 consonant-vowel syllables: texts that compress about as much as real
    transcripts (zstd ~3x), not a ten-word list that would compress many times more."""
    sizes = rng.integers(2, 6, words)
    return np.array(["".join(rng.choice(SYLLABLES, size)) for size in sizes])


def synthetic_columns(
    rng: np.random.Generator, words: np.ndarray, clips: int, shard_id: int
) -> dict[str, list[object]]:
    """One shard's rows as the writer would hold them: lengths of 1-15 s, 3-11 words, two fields."""
    lengths = rng.integers(16_000, 240_000, clips)
    buckets = np.minimum(lengths // 4000, 68)
    offsets = np.zeros(clips, dtype=np.int64)
    for bucket in np.unique(buckets):
        mine = buckets == bucket
        offsets[mine] = np.concatenate([[0], np.cumsum(lengths[mine])[:-1]])
    texts = [" ".join(words[rng.zipf(1.3, rng.integers(3, 12)) % words.size]) for _ in range(clips)]
    return {
        "bucket": buckets.tolist(),
        "offset": offsets.tolist(),
        "length": lengths.tolist(),
        "scale": rng.uniform(1e-4, 2e-3, clips).tolist(),
        "level_db": rng.uniform(-60, -10, clips).tolist(),
        "clipping": np.zeros(clips).tolist(),
        "text": texts,
        "fields": [
            {"audio_filepath": f"audio_{shard_id}/{n}.webm", "duration": int(size) / 16000}
            for n, size in enumerate(lengths)
        ],
    }


def build(out: Path, utterances: int, shards: int) -> list[float]:
    """Write the synthetic store; return the seconds of each per-shard consolidation."""
    store = locate(out)
    create_store(store, IngestSettings(), "bench")
    root, _ = open_root(store, mode="r+")
    shards_group = root[SHARDS_GROUP]
    assert isinstance(shards_group, zarr.Group)
    rng = np.random.default_rng(0)
    words = vocabulary(rng)
    complete = CompleteShards([])
    consolidate_index(store, root, complete)  # as the ingest does once, before its first shard
    timings = []
    for shard_id, clips in enumerate(np.diff(np.linspace(0, utterances, shards + 1).astype(int))):
        name = f"audio_{shard_id}"
        group = shards_group.create_group(name)
        columns = synthetic_columns(rng, words, int(clips), shard_id)
        write_columns(group, columns)
        summary = ShardSummary(
            {"size": shard_id}, f"sha256:{shard_id:064x}", int(clips), int(sum(columns["length"])), ()
        )  # type: ignore[arg-type]
        set_attribute(group, SHARD_KEY, summary.to_json())
        timings.append(min(timed_update(store, complete, name, summary) for _ in range(UPDATE_REPEATS)))
    assert read_shard_summary(root, "audio_0") is not None
    return timings


# Each shard's update is timed this many times (the same idempotent work) and the fastest kept:
# one 0.5 ms write is at the mercy of whatever else the machine runs.
UPDATE_REPEATS = 5


def timed_update(store: Location, complete: CompleteShards, name: str, summary: ShardSummary) -> float:
    started = time.perf_counter()
    record_completed(store, complete, name, summary)  # what the ingest client does when a shard completes
    return time.perf_counter() - started


OPEN = """
import json, sys, time, psutil
process = psutil.Process()
import featstore
featstore.open_store(sys.argv[2])  # a one-shard store first: imports and zarr's first use are not the index
before = process.memory_info().rss
started = time.perf_counter()
store = featstore.open_store(sys.argv[1])
seconds = time.perf_counter() - started
grown = (process.memory_info().rss - before) / 2**20
print(json.dumps({"seconds": seconds, "rss_mb": grown, "utterances": len(store)}))
"""

WORKER = """
import json, os, sys, psutil, numpy as np, featstore
store = featstore.open_store(sys.argv[1])
store.durations  # the trainer's sampler computes them in the main process, before workers fork
order = np.random.default_rng(0).permutation(len(store))
reader, writer = os.pipe()
pid = os.fork()
if pid == 0:  # the worker: one epoch of index reads, as a length-grouped sampler and a dataset do
    baseline = psutil.Process().memory_full_info().uss
    total = 0
    for batch in np.array_split(order, len(order) // 64):  # indices arrive a batch at a time
        for i in batch.tolist():
            total += len(store.texts[i]) + int(store.buckets[i]) + int(store.durations[i] > 1)
    uss = psutil.Process().memory_full_info().uss
    found = {"worker_uss_mb": (uss - baseline) / 2**20, "worker_uss_total_mb": uss / 2**20}
    os.write(writer, json.dumps(found).encode())
    os._exit(0)
os.waitpid(pid, 0)
print(os.read(reader, 4096).decode())
"""


def in_fresh_process(script: str, *stores: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, stores)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def text_sizes(store: Path) -> dict[str, float]:
    """Bytes per utterance of the texts, decoded and as stored (the compressed chunks a reader holds)."""
    decoded = sum(int(zarr.open_array(str(text)).shape[0]) for text in store.glob(f"{SHARDS_GROUP}/*/text"))
    stored = sum(chunk.stat().st_size for chunk in store.glob(f"{SHARDS_GROUP}/*/text/c/*"))
    utterances = sum(int(zarr.open_array(str(text)).shape[0]) for text in store.glob(f"{SHARDS_GROUP}/*/length"))
    return {"decoded_per_utterance": decoded / utterances, "stored_per_utterance": stored / utterances}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--utterances", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=150)
    parser.add_argument("--out", type=Path, default=None, help="where to build the store (default: a temporary folder)")
    args = parser.parse_args()
    folder = Path(args.out or tempfile.mkdtemp(prefix="index-scale-"))
    out = folder / "synthetic.zarr"
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    timings = build(out, args.utterances, args.shards)
    built = time.perf_counter() - started
    tiny = folder / "tiny.zarr"
    if tiny.exists():
        shutil.rmtree(tiny)
    build(tiny, 10, 1)
    first, last = float(np.median(timings[:5])), float(np.median(timings[-5:]))
    result = {
        "utterances": args.utterances,
        "shards": args.shards,
        "build_seconds": round(built, 1),
        "consolidation_first_ms": round(first * 1e3, 2),
        "consolidation_last_ms": round(last * 1e3, 2),
        "consolidation_last_over_first": round(last / first, 2),
        "index_json_bytes": (out / "index" / "zarr.json").stat().st_size,
        "texts": text_sizes(out),
        "open_store": in_fresh_process(OPEN, out, tiny),
        "worker": in_fresh_process(WORKER, out),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "psutil": psutil.__version__,
    }
    print(json.dumps(result, indent=1, allow_nan=False))
    if args.out is None:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
