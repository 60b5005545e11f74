"""What a busy second process costs the loader's work on this machine.

One DataLoader worker shares the 2-core machine with the main process. This times the worker's
work alone (one epoch of `StoreDataset` items and `collate`, no DataLoader, in this process) and
while a second process spins on numpy (what the main process does between batches), alternating,
in CPU seconds: a CPU-bound worker slows by that ratio whenever the main process is busy.

    OMP_NUM_THREADS=1 python bench/sibling_cost.py feats.zarr --repeat 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import featstore
from featstore.sampler import for_store
from trainer.config import TextOptions
from trainer.data import StoreDataset, collate
from trainer.vocab import build_processor, build_vocab


def spin(seconds: float) -> None:
    """Busy the other core as the main process does: float32 arithmetic over a few MB."""
    values = np.random.default_rng(0).random(1 << 20, dtype=np.float32)
    ends = time.perf_counter() + seconds
    while time.perf_counter() < ends:
        (values * 1.0001).sum()


def epoch_cpu(dataset: StoreDataset, batches: list[list[int]]) -> float:
    """CPU seconds of one epoch of the worker's work, with a fresh reader (as a new worker has)."""
    dataset._store = None
    started = time.process_time()
    for batch in batches:
        collate([dataset[i] for i in batch])
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--seconds", type=float, default=100.0, help="max batch seconds")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = featstore.open_store(args.store)
    texts = TextOptions()
    with tempfile.TemporaryDirectory() as scratch:
        processor = build_processor(build_vocab(texts.normalize(t) for t in store.texts), Path(scratch))
    dataset = StoreDataset(args.store, processor, texts)
    batches = [list(batch) for batch in for_store(store, max_batch_seconds=args.seconds, seed=0)]
    epoch_cpu(dataset, batches)  # page cache and allocator warm
    result: dict[str, Any] = {"alone": [], "with_busy_sibling": []}
    for _ in range(args.repeat):
        result["alone"].append(round(epoch_cpu(dataset, batches), 3))
        sibling = multiprocessing.get_context("fork").Process(target=spin, args=(60.0,), daemon=True)
        sibling.start()
        time.sleep(0.2)
        result["with_busy_sibling"].append(round(epoch_cpu(dataset, batches), 3))
        sibling.terminate()
        sibling.join()
    result["ratio_of_medians"] = round(
        float(np.median(result["with_busy_sibling"])) / float(np.median(result["alone"])), 2
    )
    result["audio_s"] = round(float(store.durations.sum()), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
