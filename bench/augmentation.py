"""Augmentation against none, on a held-out split that is perturbed the way augmentation trains for.

1. A clean tone-language training corpus and a held-out corpus (see bench/cleaning.py), and
   two noise stores of the same kind of noise (low-passed noise plus mains hum, a random colour
   and hum per clip) from different seeds: one to train with, one to perturb the held-out split.
2. The perturbed held-out split: every held-out clip played at speed 0.9 or 1.1 (alternately),
   with the test noise added at 10 dB SNR, re-encoded as webm/opus and ingested.
3. `trainer fit` from our language-a base (models/tone-a: tiny-random trained on clean audio of
   this language), every weight at lr 3e-4, without augmentation, and with `--augment-speeds
   0.9,1.0,1.1 --augment-noise-store <train noise> --augment-snr-db 5 20 --augment-gain-db -6 6`,
   the same steps and settings otherwise; both evaluated on the clean and the perturbed split.
   (From tiny-random, before its head's blank bias, 500 steps went to leaving the blank plateau.)

    OMP_NUM_THREADS=1 python bench/augmentation.py --work /tmp/augmentation --json bench/out/augmentation.json
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from cleaning import command, fit, held_out, make_store, run
from results import emit_json

from featstore.audio import decode_clip
from featstore.sample import MANIFEST_DIR, encode_webm_opus
from trainer.augment import add_noise, change_speed, noise_segment

SR = 16_000


def noise_clip(rng: np.random.Generator, seconds: float = 3.0) -> np.ndarray:
    """Low-passed white noise (a random colour) plus mains hum at a random level."""
    white = rng.normal(0, 1, int(seconds * SR))
    pole = rng.uniform(0.0, 0.95)
    coloured = np.empty_like(white)
    level = 0.0
    for i, x in enumerate(white):  # one-pole low-pass
        level = pole * level + (1 - pole) * x
        coloured[i] = level
    hum = rng.uniform(0, 2) * np.std(coloured) * np.sin(2 * np.pi * rng.choice([50, 60]) * np.arange(white.size) / SR)
    audio = coloured + hum
    return (0.3 * audio / np.max(np.abs(audio))).astype(np.float32)


def write_split(split_dir: Path, clips: list[tuple[str, np.ndarray, str]]) -> None:
    """One shard in the real layout: (name, 16 kHz audio, text) per clip."""
    manifest_dir = split_dir / MANIFEST_DIR
    (manifest_dir / "audio_shards").mkdir(parents=True, exist_ok=True)
    lines = []
    with tarfile.open(manifest_dir / "audio_shards" / "audio_0.tar.xz", mode="w:xz") as tar:
        for name, audio, text in clips:
            data = encode_webm_opus(audio, rate=SR)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            lines.append(json.dumps({"audio_filepath": name, "text": text, "duration": audio.size / SR, "shard_id": 0}))
    (manifest_dir / "manifest_0.json").write_text("\n".join(lines) + "\n", encoding="utf-8")


def ingest(split_dir: Path, store: Path, *options: str) -> Path:
    run(
        command("featstore"),
        "ingest",
        split_dir,
        "--out",
        store,
        "--workers",
        1,
        "--overwrite",
        "--no-progress",
        *options,
    )
    return store


def noise_store(work: Path, name: str, seed: int, clips: int) -> Path:
    rng = np.random.default_rng(seed)
    write_split(work / name, [(f"{name}_{i:04d}.webm", noise_clip(rng), "") for i in range(clips)])
    return ingest(work / name, work / f"{name}.zarr", "--keep-empty-text")


def perturbed_split(work: Path, clean_split: Path, noise: np.ndarray, snr_db: float) -> Path:
    """Every clip of `clean_split` at speed 0.9 or 1.1 (alternately) with `noise` at `snr_db`."""
    rng = np.random.default_rng(0)
    records = {}
    for manifest in clean_split.rglob("manifest_*.json"):
        for line in manifest.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            records[record["audio_filepath"]] = record["text"]
    clips = []
    for shard in sorted(clean_split.rglob("audio_*.tar.xz")):
        with tarfile.open(shard) as tar:
            for n, member in enumerate(tar.getmembers()):
                audio = decode_clip(tar.extractfile(member).read())  # type: ignore[union-attr]
                audio = change_speed(audio, (0.9, 1.1)[n % 2], SR)
                audio = add_noise(audio, noise_segment(noise, audio.size, rng.random()), snr_db)
                clips.append((member.name, audio / max(1.0, float(np.max(np.abs(audio)))), records[member.name]))
    write_split(work / "perturbed", clips)
    return ingest(work / "perturbed", work / "perturbed.zarr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/augmentation-bench"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--base", default=str(Path(__file__).parents[1] / "models" / "tone-a"))
    parser.add_argument("--lr", default="3e-4")
    parser.add_argument("--json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    train, _ = make_store(args.work, "train", 4, 60, seed=21, mislabels=0.0)
    dev, _ = make_store(args.work, "dev", 1, 60, seed=22, mislabels=0.0)
    train_noise = noise_store(args.work, "noise_train", seed=31, clips=40)
    test_noise = np.concatenate([noise_clip(np.random.default_rng([32, i])) for i in range(10)])
    perturbed = perturbed_split(args.work, args.work / "corpora" / "dev_tarred", test_noise, snr_db=10.0)

    plain, augmented = args.work / "run-plain", args.work / "run-augmented"
    seconds = [fit(train, dev, plain, args.steps, "--lr", args.lr, base=args.base)]
    augment = ["--augment-speeds", "0.9,1.0,1.1", "--augment-noise-store", train_noise]
    augment += ["--augment-snr-db", "5", "20", "--augment-gain-db", "-6", "6"]
    seconds.append(fit(train, dev, augmented, args.steps, "--lr", args.lr, *augment, base=args.base))
    result = {
        "steps": args.steps,
        "base": args.base,
        "lr": args.lr,
        "augment": " ".join(map(str, augment)),
        "plain": {"clean": held_out(plain, dev), "perturbed": held_out(plain, perturbed)},
        "augmented": {"clean": held_out(augmented, dev), "perturbed": held_out(augmented, perturbed)},
        "fit_seconds": [round(s, 1) for s in seconds],
    }
    emit_json(result, args.json)


if __name__ == "__main__":
    main()
