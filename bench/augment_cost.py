"""Where an augmented DataLoader worker's CPU goes, stage by stage, and what soxr's options cost.

One process, one core, the store's utterances already read (so only augmentation is timed),
the draws of bench/trainer_loader.py's `ours-augmented` path: speed 0.9/1.0/1.1, noise from a
store (the store itself by default) on every clip at 10-30 dB SNR, gain -6..6 dB.

1. Stages over one epoch (CPU seconds, median of `--repeat`): int16 -> float, speed change
   (soxr HQ), noise mixing, re-quantization, the whole `Augmenter` call, and reading the
   epoch's noise bank (opening the noise store included, as a fresh worker does).
2. The whole `Augmenter` call with each soxr quality (alternating), and how far each
   quality's speed change is from HQ's on white noise (dB below the signal).
3. One 5.8-s clip at speed 0.9 through soxr: float32, float64 or int16 input, one-shot or a
   reused `ResampleStream`, against one call on 100 samples (the per-call setup).

    OMP_NUM_THREADS=1 python bench/augment_cost.py STORE --json bench/out/augment-cost.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import soxr
from results import emit_json

import trainer.augment as augment
from featstore import open_store

SR = 16_000
QUALITIES = ("LQ", "MQ", "HQ", "VHQ")


def cpu(work: Callable[[], object], repeat: int) -> float:
    """Median CPU seconds of `work` over `repeat` runs."""
    times = []
    for _ in range(repeat):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return statistics.median(times)


def each(function: Callable[..., object], inputs: list[tuple[Any, ...]]) -> Callable[[], None]:
    """Call `function` on every input, dropping each result (as a worker does, which keeps no
    array: keeping 600 new arrays would time the page faults of fresh memory instead)."""

    def run() -> None:
        for arguments in inputs:
            function(*arguments)

    return run


def stages(store_path: str, repeat: int) -> dict[str, Any]:
    store = open_store(store_path)
    options = augment.AugmentOptions((0.9, 1.0, 1.1), store_path, 1.0, (10.0, 30.0), (-6.0, 6.0))
    augmenter = augment.Augmenter(options, seed=0, count=len(store), sample_rate=store.sample_rate)
    draws = augmenter.draws(0)
    raw = [store.raw_audio(i).copy() for i in range(len(store))]
    scales = [float(s) for s in store.scales]
    floats = [np.multiply(r, s, dtype=np.float32) for r, s in zip(raw, scales, strict=True)]
    speeds = [augment.change_speed(f, float(draws.speed[i]), SR) for i, f in enumerate(floats)]
    bank = augmenter.noise_bank(0)
    noises = [augment.noise_segment(bank, a.size, float(draws.noise_offset[i])) for i, a in enumerate(speeds)]
    mixed = [
        augment.add_noise(a, n, float(draws.snr_db[i])) for i, (a, n) in enumerate(zip(speeds, noises, strict=True))
    ]

    def fresh_bank() -> np.ndarray:
        return augment.noise_bank(open_store(store_path), draws.bank_start, augment.NOISE_BANK_SECONDS)

    stage_work = {
        "to_float": each(lambda r, s: np.multiply(r, s, dtype=np.float32), list(zip(raw, scales, strict=True))),
        "speed_soxr_hq": each(augment.change_speed, [(f, float(draws.speed[i]), SR) for i, f in enumerate(floats)]),
        "noise": each(
            augment.add_noise,
            [(a, n, float(draws.snr_db[i])) for i, (a, n) in enumerate(zip(speeds, noises, strict=True))],
        ),
        "quantize_with_copy": each(lambda m: augment.quantize(m.copy()), [(m,) for m in mixed]),
        "copy_only": each(np.copy, [(m,) for m in mixed]),
        "augmenter_call": each(augmenter, [(i, r, scales[i], 0) for i, r in enumerate(raw)]),
        "noise_bank_fresh": fresh_bank,
    }
    return {
        "utterances": len(store),
        "audio_s": sum(r.size for r in raw) / SR,
        "changed_speed_share": float(np.mean(draws.speed != 1.0)),
        "cpu_s": {name: round(cpu(work, repeat), 4) for name, work in stage_work.items()},
        "qualities": qualities(augmenter, raw, scales, repeat),
    }


def at_quality(resample: Callable[..., np.ndarray], quality: str) -> Callable[..., np.ndarray]:
    """`soxr.resample` that ignores the quality it is asked for and uses `quality`."""
    return lambda x, in_rate, out_rate, **_: resample(x, in_rate, out_rate, quality=quality)


def qualities(augmenter: augment.Augmenter, raw: list[np.ndarray], scales: list[float], repeat: int) -> dict[str, Any]:
    """The whole augmenter call per soxr quality, alternating qualities each round."""
    resample = soxr.resample
    times: dict[str, list[float]] = {q: [] for q in QUALITIES}
    try:
        for round_ in range(repeat):
            for quality in QUALITIES if round_ % 2 == 0 else QUALITIES[::-1]:
                augment.soxr.resample = at_quality(resample, quality)
                started = time.process_time()
                for i, r in enumerate(raw):
                    augmenter(i, r, scales[i], 0)
                times[quality].append(time.process_time() - started)
    finally:
        augment.soxr.resample = resample
    noise = np.random.default_rng(0).normal(0, 0.1, 5 * SR).astype(np.float32)
    reference = resample(noise, 0.9 * SR, SR, quality="HQ")
    distance = {}
    for quality in ("QQ", *QUALITIES):
        changed = resample(noise, 0.9 * SR, SR, quality=quality)[: reference.size]
        error = float(np.sum((changed - reference[: changed.size]) ** 2))
        distance[quality] = None if error == 0 else round(10 * np.log10(float(np.sum(reference**2)) / error), 1)
    return {
        "augmenter_cpu_s": {q: round(statistics.median(v), 4) for q, v in times.items()},
        "db_below_signal_vs_hq": distance,
    }


def one_clip(repeat: int) -> dict[str, float]:
    """Milliseconds of CPU per speed change of one 5.8-s clip at 0.9, by soxr input and call."""
    clip = np.random.default_rng(1).normal(0, 0.1, int(5.8 * SR)).astype(np.float32)
    stream = soxr.ResampleStream(0.9 * SR, SR, 1, dtype="float32", quality="HQ")

    def reused() -> np.ndarray:
        out = stream.resample_chunk(clip, last=True)
        stream.clear()
        return out

    calls: dict[str, Callable[[], object]] = {
        "float32": lambda: soxr.resample(clip, 0.9 * SR, SR, quality="HQ"),
        "float64": lambda: soxr.resample(clip.astype(np.float64), 0.9 * SR, SR, quality="HQ"),
        "int16": lambda: soxr.resample((clip * 30000).astype(np.int16), 0.9 * SR, SR, quality="HQ"),
        "float32_reused_stream": reused,
        "setup_only_100_samples": lambda: soxr.resample(clip[:100], 0.9 * SR, SR, quality="HQ"),
    }
    assert np.array_equal(reused(), soxr.resample(clip, 0.9 * SR, SR, quality="HQ"))
    return {
        name: round(1000 * cpu(lambda c=call: [c() for _ in range(50)], repeat) / 50, 4) for name, call in calls.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    result = {"stages": stages(args.store, args.repeat), "one_clip_ms": one_clip(args.repeat)}
    emit_json(result, args.json)


if __name__ == "__main__":
    main()
