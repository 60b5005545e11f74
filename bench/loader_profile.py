"""Where the end-to-end loader's time goes: chunk read and decode, collation, worker hand-off,
`model_inputs` (the path `bench/trainer_loader.py` times as "ours"), with cProfile.

1. One epoch with no worker, profiled: everything the worker does, plus `model_inputs`, in one
   process, split by the cumulative time of the functions named in `PARTS`.
2. The worker hand-off, timed apart: each of the epoch's batches pickled as a worker's queue
   does (`ForkingPickler`: the int16 tensor's storage moves to shared memory, its file
   descriptor travels) and unpickled again.
3. One epoch with one worker, the main process profiled: waiting for the worker, rebuilding the
   shared tensors, `model_inputs`.

    OMP_NUM_THREADS=1 python bench/loader_profile.py STORE.zarr --seconds 100 --json profile.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

# part name -> (file suffix, function name) whose cumulative time it is
PARTS = {
    "chunk_read (fs.cat_file)": ("fsspec/spec.py", "cat_file"),
    "chunk_decode (Blosc)": ("featstore/reader.py", "_decode_in_this_thread"),
    "raw_audio (read + decode + slice)": ("featstore/reader.py", "raw_audio"),
    "StoreDataset.__getitem__": ("trainer/data.py", "__getitem__"),
    "collate": ("trainer/data.py", "collate"),
    "model_inputs": ("trainer/data.py", "model_inputs"),
    "waiting for the worker (queue get)": ("torch/utils/data/dataloader.py", "_try_get_data"),
    "rebuild shared tensors (unpickle)": ("torch/multiprocessing/reductions.py", "rebuild_storage_fd"),
}


def build(store_path: str, seconds: float, workers: int) -> tuple[Any, Any]:
    from trainer_loader import processor_for

    import featstore
    from featstore.sampler import for_store
    from trainer.config import TextOptions
    from trainer.data import StoreDataset, make_loader

    store = featstore.open_store(store_path)
    processor = processor_for(store, Path(tempfile.mkdtemp(prefix="loader-profile-")))
    dataset = StoreDataset(store_path, processor, TextOptions())
    sampler = for_store(store, max_batch_seconds=seconds, seed=0)
    return make_loader(dataset, sampler, workers=workers), store


def profiled_epoch(loader: Any) -> tuple[float, float, pstats.Stats]:
    """Wall seconds and audio seconds of one epoch to model-ready tensors, and its profile."""
    from trainer.data import model_inputs

    profile = cProfile.Profile()
    audio = 0
    t0 = time.perf_counter()
    profile.enable()
    for batch in loader:
        model_inputs(batch, "cpu")
        audio += int(batch.lengths.sum())
    profile.disable()
    wall = time.perf_counter() - t0
    return wall, audio / 16_000, pstats.Stats(profile, stream=io.StringIO())


def parts(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of each of `PARTS` (0 when not called)."""
    found = dict.fromkeys(PARTS, 0.0)
    for (filename, _line, function), (_cc, _nc, _tt, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        for part, (suffix, name) in PARTS.items():
            if function == name and filename.endswith(suffix):
                found[part] += cumulative
    return found


def hand_off_seconds(loader: Any) -> dict[str, float]:
    """Seconds to pickle every batch of an epoch as a worker's queue does, and to unpickle it."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers the shared-memory reductions for tensors)

    dumps = loads = 0.0
    for batch in loader:
        t0 = time.perf_counter()
        data = ForkingPickler.dumps(batch)
        t1 = time.perf_counter()
        ForkingPickler.loads(bytes(data))
        dumps, loads = dumps + t1 - t0, loads + time.perf_counter() - t1
    return {"pickle_to_shared_memory_s": dumps, "unpickle_s": loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--seconds", type=float, default=100)
    parser.add_argument("--json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    result: dict[str, Any] = {"store": args.store, "max_batch_seconds": args.seconds}
    for workers in (0, 1):
        loader, _ = build(args.store, args.seconds, workers)
        wall, audio, stats = profiled_epoch(loader)
        split = parts(stats)
        named = ("StoreDataset.__getitem__", "collate", "model_inputs")
        if workers == 0:
            split["rest: sampler, DataLoader fetch"] = wall - sum(split[part] for part in named)
        result[f"workers_{workers}"] = {"wall_s": wall, "audio_s": audio, "audio_s_per_s": audio / wall, **split}
        print(f"workers={workers}: {audio / wall:,.0f} audio-s/s over {wall:.2f} s", flush=True)
        for part, seconds in split.items():
            if seconds:
                print(f"  {part:40s} {seconds:6.3f} s  {seconds / wall:6.1%}", flush=True)
    loader, _ = build(args.store, args.seconds, 0)
    result["hand_off"] = hand_off_seconds(loader)
    print("hand-off, the whole epoch:", json.dumps(result["hand_off"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
