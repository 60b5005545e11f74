"""Where the end-to-end loader's time goes: chunk read and decode, collation, worker hand-off,
`model_inputs` (the path `bench/trainer_loader.py` times as "ours"), with cProfile.

1. One epoch with no worker, profiled: everything the worker does, plus `model_inputs`, in one
   process, split by the cumulative time of the functions named in `PARTS`.
2. The worker hand-off, timed apart: each of the epoch's batches pickled as a worker's queue
   does (`ForkingPickler`: the int16 tensor's storage moves to shared memory, its file
   descriptor travels) and unpickled again.
3. One epoch with one worker, the main process profiled: waiting for the worker, rebuilding the
   shared tensors, `model_inputs`.
4. With `--shar DIR` (the Shar cut set `bench/trainer_loader.py` wrote under its --work), the
   Lhotse path's epoch with no worker, split by `LHOTSE_PARTS`.

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

from results import save_json

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


LHOTSE_PARTS = {
    "sampler (Shar tar + jsonl reading, bucketing)": ("lhotse/dataset/sampling/base.py", "__next__"),
    "K2SpeechRecognitionDataset.__getitem__": ("lhotse/dataset/speech_recognition.py", "__getitem__"),
    "FLAC decode (soundfile _cdata_io)": ("site-packages/soundfile.py", "_cdata_io"),
    "collate_audio (decode + pad)": ("lhotse/dataset/collation.py", "collate_audio"),
    "NormalizeRows (input transform)": ("lhotse_path.py", "__call__"),
    "model_inputs (mask, labels)": ("lhotse_path.py", "model_inputs"),
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


def lhotse_epoch(shar_dir: str, store: Any, seconds: float) -> dict[str, float]:
    """The Lhotse path's epoch with no worker, profiled, split by `LHOTSE_PARTS`."""
    from lhotse_path import make_lhotse_loader, model_inputs
    from trainer_loader import processor_for

    from trainer.config import TextOptions
    from trainer.vocab import encode_labels

    processor = processor_for(store, Path(tempfile.mkdtemp(prefix="loader-profile-")))
    text = TextOptions()
    labels_by_text = {t: list(encode_labels(processor, text.normalize(t))) for t in set(store.texts)}
    loader = make_lhotse_loader(Path(shar_dir), seconds, 0)
    profile = cProfile.Profile()
    audio = 0
    t0 = time.perf_counter()
    profile.enable()
    for batch in loader:
        audio += model_inputs(batch, labels_by_text)[1]
    profile.disable()
    wall = time.perf_counter() - t0
    split = parts(pstats.Stats(profile, stream=io.StringIO()), LHOTSE_PARTS)
    return {"wall_s": wall, "audio_s_per_s": audio / 16_000 / wall, **split}


def parts(stats: pstats.Stats, named: dict[str, tuple[str, str]] = PARTS) -> dict[str, float]:
    """Cumulative seconds of each of `named` (0 when not called)."""
    found = dict.fromkeys(named, 0.0)
    for (filename, _line, function), (_cc, _nc, _tt, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        for part, (suffix, name) in named.items():
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
    parser.add_argument("--shar", help="also profile the Lhotse path over this Shar cut set")
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
    loader, store = build(args.store, args.seconds, 0)
    result["hand_off"] = hand_off_seconds(loader)
    print("hand-off, the whole epoch:", json.dumps(result["hand_off"]), flush=True)
    if args.shar:
        result["lhotse_workers_0"] = lhotse_epoch(args.shar, store, args.seconds)
        print("lhotse, workers=0:", json.dumps(result["lhotse_workers_0"]), flush=True)
    if args.json:
        save_json(result, args.json)


if __name__ == "__main__":
    main()
