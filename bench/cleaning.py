"""Data cleaning on a corpus with planted mislabels: does `trainer score` find them, and does
training without them help?

1. A tone-language training corpus with `--mislabels` of its clips given a wrong transcript
   (`featstore sample`'s planting: another clip's transcript, or its own cut in half), and a
   clean held-out corpus; both ingested.
2. `trainer fit` on everything for `--steps` (full fine-tuning of tiny-random, the settings
   that learn fast on a CPU, as in tests/trainer/test_learning.py), then `trainer score` on the training store.
   Recall: the share of planted clips among the worst `--top` share of the table.
3. `trainer fit --exclude worst.txt` (the worst `--top` rows of the table; `--select cer`:
   `--exclude-cer-above T --scores scores.csv` instead) for the same steps, from the same start.
   Both runs evaluated on the held-out store (`trainer evaluate`).

    OMP_NUM_THREADS=1 python bench/cleaning.py --work /tmp/cleaning --json bench/out/cleaning.json
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from featstore.sample import write_sample_corpus

ALPHABET = "abcdefghij"


def command(name: str) -> str:
    """The console script installed beside this Python (trainer, featstore)."""
    return str(Path(sys.executable).with_name(name))


def run(*args: Any) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, args))}\n{done.stderr[-3000:]}")
    return done.stdout


def make_store(
    work: Path, split: str, shards: int, clips: int, seed: int, mislabels: float
) -> tuple[Path, dict[str, str]]:
    """Generate and ingest a corpus; return the store and its planted mislabels."""
    corpus = write_sample_corpus(
        work / "corpora",
        shards=shards,
        clips_per_shard=clips,
        seed=seed,
        defects=False,
        alphabet=ALPHABET,
        split=split,
        words=(1, 3),
        mislabels=mislabels,
    )
    store = work / f"{split}.zarr"
    run(
        command("featstore"), "ingest", corpus.split_dir, "--out", store, "--workers", 1, "--overwrite", "--no-progress"
    )
    return store, corpus.mislabels


def fit(store: Path, dev: Path, out: Path, steps: int, *extra: Any, base: str = "tiny-random") -> float:
    """Train every weight of `base` (from scratch by default); return the seconds it took.

    `extra` options come last, so they override the ones here (click keeps an option's last value).
    """
    started = time.monotonic()
    run(
        command("trainer"), "fit", "--store", store, "--eval-store", dev, "--out", out, "--overwrite",
        "--base-model", base, "--finetune", "full", "--train-feature-encoder",
        "--batch-size", 16, "--grad-accum", 1, "--lr", "1e-3", "--warmup-ratio", 0.05, "--schedule", "constant",
        "--max-steps", steps, "--eval-steps", steps, "--logging-steps", 25,
        "--no-gradient-checkpointing", "--device", "cpu", *extra,
    )  # fmt: skip
    return time.monotonic() - started


def held_out(run_dir: Path, dev: Path) -> dict[str, float]:
    return dict(json.loads(run(command("trainer"), "evaluate", "--store", dev, "--run", run_dir, "--json"))["model"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cleaning-bench"))
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--clips", type=int, default=60, help="clips per training shard")
    parser.add_argument("--mislabels", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--top", type=float, default=0.05, help="share of the table searched for planted clips")
    parser.add_argument("--select", choices=["top", "cer"], default="top", help="what the retrain leaves out")
    parser.add_argument("--cer-above", type=float, default=0.5, help="with --select cer: the CER threshold")
    parser.add_argument("--base", default="tiny-random", help="what both fits start from, e.g. models/tone-a")
    parser.add_argument("--lr", default="1e-3")
    parser.add_argument("--json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    train, planted = make_store(args.work, "train", args.shards, args.clips, seed=11, mislabels=args.mislabels)
    dev, _ = make_store(args.work, "dev", 1, 60, seed=12, mislabels=0.0)
    everything = args.work / "run-everything"
    seconds_everything = fit(train, dev, everything, args.steps, "--lr", args.lr, base=args.base)
    scores = args.work / "scores.csv"
    run(command("trainer"), "score", "--store", train, "--run", everything, "--out", scores)
    with scores.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    top = rows[: round(args.top * len(rows))]
    found = [r["audio_filepath"] for r in top if r["audio_filepath"] in planted]
    stored = [r["audio_filepath"] for r in rows if r["audio_filepath"] in planted]  # ingest rejects the shortest
    if args.select == "top":  # the table's worst rows, as an --exclude list
        excluded = [r["audio_filepath"] for r in top]
        (args.work / "worst.txt").write_text("".join(name + "\n" for name in excluded), encoding="utf-8")
        exclude = ["--exclude", args.work / "worst.txt"]
    else:
        excluded = [r["audio_filepath"] for r in rows if float(r["cer"]) > args.cer_above]
        exclude = ["--exclude-cer-above", args.cer_above, "--scores", scores]

    cleaned = args.work / "run-cleaned"
    seconds_cleaned = fit(train, dev, cleaned, args.steps, "--lr", args.lr, *exclude, base=args.base)
    result = {
        "utterances": len(rows),
        "planted": len(planted),
        "planted_in_store": len(stored),
        "planted_kinds": sorted(set(planted.values())),
        "top_share": args.top,
        "top_rows": len(top),
        "recall_in_top": len(found) / len(stored),
        "planted_ranks": sorted(i for i, r in enumerate(rows) if r["audio_filepath"] in planted),
        "select": args.select if args.select == "top" else f"cer > {args.cer_above}",
        "excluded": len(excluded),
        "excluded_planted": sum(name in planted for name in excluded),
        "steps": args.steps,
        "base": args.base,
        "lr": args.lr,
        "held_out_everything": held_out(everything, dev),
        "held_out_cleaned": held_out(cleaned, dev),
        "fit_seconds": [round(seconds_everything, 1), round(seconds_cleaned, 1)],
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
