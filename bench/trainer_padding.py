"""Padding per epoch: featstore's length-grouped sampler against transformers and Lhotse.

Same durations (a store's), same mean batch duration (audio seconds per batch, i.e. the same
number of batches per epoch):

- ours: `featstore.sampler.for_store(store, max_batch_seconds=S, seed=0)`, the trainer's sampler;
- transformers' `LengthGroupedSampler` (what `Trainer` uses with group_by_length), consecutive
  slices of `batch_size` indices, batch_size = round(utterances / our batches per epoch);
- Lhotse's `DynamicBucketingSampler` over dummy MonoCuts with the same durations, `max_duration`
  found by bisection so that its mean batch duration matches ours (within 1%); with its default
  10 buckets and with 30 (about what the store's duration buckets give ours).

Padding fraction = 1 - sum(durations) / sum(longest in batch x batch size), over all batches of
`--epochs` epochs (0, 1, ...), reported as mean and worst epoch.

    python bench/trainer_padding.py /tmp/proto/big.zarr --seconds 50 100 200 \
        --json bench/out/trainer-padding.json
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from results import save_json
from transformers.trainer_pt_utils import LengthGroupedSampler

import featstore
from featstore.sampler import for_store

SR = 16_000


def padding(durations: np.ndarray, batches: list[list[int]]) -> tuple[float, float]:
    """(padding fraction, mean batch seconds) of `batches`."""
    real = sum(durations[b].sum() for b in batches)
    padded = sum(durations[b].max() * len(b) for b in batches)
    return float(1 - real / padded), float(real / len(batches))


def ours_batches(store: Any, seconds: float, epoch: int) -> list[list[int]]:
    sampler = for_store(store, max_batch_seconds=seconds, seed=0)
    sampler.set_epoch(epoch)
    return [list(b) for b in sampler]


def hf_batches(durations: np.ndarray, batch_size: int, epoch: int) -> list[list[int]]:
    lengths = [int(round(d * SR)) for d in durations]
    sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(epoch))
    order = list(sampler)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def lhotse_cuts(durations: np.ndarray) -> Any:
    from lhotse import CutSet
    from lhotse.testing.dummies import dummy_cut

    return CutSet.from_cuts(dummy_cut(i, duration=float(d)) for i, d in enumerate(durations))


def lhotse_batches(cuts: Any, max_duration: float, num_buckets: int, epoch: int) -> list[list[int]]:
    from lhotse.dataset import DynamicBucketingSampler

    sampler = DynamicBucketingSampler(
        cuts, max_duration=max_duration, num_buckets=num_buckets, shuffle=True, seed=0, drop_last=False
    )
    sampler.set_epoch(epoch)
    # dummy_cut ids are "dummy-mono-cut-%04d" % i
    return [[int(c.id.rsplit("-", 1)[1]) for c in batch] for batch in sampler]


def lhotse_matched(cuts: Any, durations: np.ndarray, target: float, num_buckets: int) -> float:
    """max_duration whose epoch-0 mean batch duration is within 1% of `target` (bisection)."""
    lo, hi = target * 0.5, target * 3.0
    best = hi
    for _ in range(25):
        mid = (lo + hi) / 2
        _, mean = padding(durations, lhotse_batches(cuts, mid, num_buckets, 0))
        best = mid
        if abs(mean - target) / target < 0.01:
            break
        if mean < target:
            lo = mid
        else:
            hi = mid
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--seconds", type=float, nargs="+", default=[50, 100, 200])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()

    store = featstore.open_store(args.store)
    durations = np.asarray(store.durations, dtype=np.float64)
    n = durations.size
    try:
        cuts = lhotse_cuts(durations)
        import lhotse

        lhotse_version = lhotse.__version__
    except ImportError:
        cuts, lhotse_version = None, None
    import transformers

    rows = []
    for seconds in args.seconds:
        t0 = time.perf_counter()
        ours = [padding(durations, ours_batches(store, seconds, e)) for e in range(args.epochs)]
        mean_batch_s = float(np.mean([m for _, m in ours]))
        n_batches = n / (mean_batch_s / durations.mean())
        batch_size = max(1, round(n / n_batches))
        hf = [padding(durations, hf_batches(durations, batch_size, e)) for e in range(args.epochs)]
        row: dict[str, Any] = {
            "max_batch_seconds": seconds,
            "ours_mean_batch_s": mean_batch_s,
            "ours_padding": [p for p, _ in ours],
            "hf_batch_size": batch_size,
            "hf_mean_batch_s": float(np.mean([m for _, m in hf])),
            "hf_padding": [p for p, _ in hf],
        }
        # integer batch sizes cannot match exactly: also the two that straddle our mean batch
        for name, bs in (("hf_floor", int(np.floor(n / n_batches))), ("hf_ceil", int(np.ceil(n / n_batches)))):
            other = [padding(durations, hf_batches(durations, max(1, bs), e)) for e in range(args.epochs)]
            row[f"{name}_batch_size"] = bs
            row[f"{name}_mean_batch_s"] = float(np.mean([m for _, m in other]))
            row[f"{name}_padding"] = [p for p, _ in other]
        if cuts is not None:
            for buckets in (10, 30):
                max_duration = lhotse_matched(cuts, durations, mean_batch_s, buckets)
                lh = [padding(durations, lhotse_batches(cuts, max_duration, buckets, e)) for e in range(args.epochs)]
                row[f"lhotse{buckets}_max_duration"] = max_duration
                row[f"lhotse{buckets}_mean_batch_s"] = float(np.mean([m for _, m in lh]))
                row[f"lhotse{buckets}_padding"] = [p for p, _ in lh]
        row["elapsed_s"] = time.perf_counter() - t0
        rows.append(row)

        def fmt(key: str, row: dict[str, Any] = row) -> str:
            values = row[key]
            return f"{100 * np.mean(values):5.2f}% (worst {100 * max(values):5.2f}%)"

        line = (
            f"S={seconds:g}: mean batch {mean_batch_s:.1f}s | ours {fmt('ours_padding')} | "
            f"HF LengthGrouped bs={batch_size} ({row['hf_mean_batch_s']:.1f}s) {fmt('hf_padding')}"
        )
        line += (
            f" | HF bs={row['hf_floor_batch_size']} ({row['hf_floor_mean_batch_s']:.1f}s) {fmt('hf_floor_padding')}"
            f" / bs={row['hf_ceil_batch_size']} ({row['hf_ceil_mean_batch_s']:.1f}s) {fmt('hf_ceil_padding')}"
        )
        for buckets in (10, 30):
            if f"lhotse{buckets}_padding" in row:
                line += (
                    f" | lhotse {buckets} buckets max_duration={row[f'lhotse{buckets}_max_duration']:.1f}"
                    f" ({row[f'lhotse{buckets}_mean_batch_s']:.1f}s) {fmt(f'lhotse{buckets}_padding')}"
                )
        print(line, flush=True)

    result = {
        "store": args.store,
        "utterances": n,
        "hours": float(durations.sum() / 3600),
        "epochs": args.epochs,
        "transformers": transformers.__version__,
        "lhotse": lhotse_version,
        "rows": rows,
    }
    if args.json:
        save_json(result, args.json)


if __name__ == "__main__":
    main()
