"""Data cleaning on a corpus with planted mislabels: does `trainer score` find them, and does
training without them help?

Per seed (`--seeds`, one by default):

1. A tone-language training corpus with `--mislabels` of its clips given a wrong transcript
   (`featstore sample`'s planting: another clip's transcript, or its own cut in half), new for
   each seed; one clean held-out corpus shared by all seeds; both ingested.
2. `trainer fit` on everything for `--steps` (full fine-tuning of `--base`: tiny-random by
   default, the settings that learn fast on a CPU, as in tests/trainer/test_learning.py; or
   `--finetune lora`, the README's recipe for adapting models/tone-a to `--language b`), then
   `trainer score` on the training store, with that run or, with `--score-steps`, with a
   separate shorter fit (a model that has not yet memorised the wrong transcripts).
   Recall: the share of planted clips among the worst `--top` share of the table.
3. `trainer fit --exclude worst.txt` (the worst `--top` rows of the table; `--select cer`:
   `--exclude-cer-above T --scores scores.csv` instead) for the same steps, from the same start,
   with the same `--seed`. Both runs evaluated on the held-out store (`trainer evaluate`).

With several seeds the result has the paired differences (cleaned minus everything) of held-out
CER and WER, their mean and median, and how many seeds cleaning wins. `--control` adds a third
fit per seed that leaves out as many random clean clips instead (the planted ones kept): what
a smaller corpus does on its own, to hold the cleaned run's gain against.

    OMP_NUM_THREADS=1 python bench/cleaning.py --work /tmp/cleaning --json bench/out/cleaning.json
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from results import emit_json

from featstore.sample import write_sample_corpus

ALPHABET = "abcdefghij"  # language a's letters the runs use (language b: its own ten)
# `--finetune lora`: the README's recipe for adapting models/tone-a to language b.
LORA_RECIPE = ["--finetune", "lora", "--lora-r", 8, "--lora-alpha", 16, "--lora-dropout", 0]
LORA_RECIPE += ["--warmup-ratio", 0.1, "--schedule", "linear", "--freeze-feature-encoder"]
SETTINGS = (
    "language",
    "shards",
    "clips",
    "dev_clips",
    "mislabels",
    "steps",
    "score_steps",
    "top",
    "base",
    "finetune",
    "lr",
    "control",
)


def command(name: str) -> str:
    """The console script installed beside this Python (trainer, featstore)."""
    return str(Path(sys.executable).with_name(name))


def run(*args: Any) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, args))}\n{done.stderr[-3000:]}")
    return done.stdout


def make_store(
    work: Path, split: str, shards: int, clips: int, seed: int, mislabels: float, language: str = "a"
) -> tuple[Path, dict[str, str]]:
    """Generate and ingest a corpus; return the store and its planted mislabels."""
    corpus = write_sample_corpus(
        work / "corpora",
        shards=shards,
        clips_per_shard=clips,
        seed=seed,
        defects=False,
        alphabet=ALPHABET if language == "a" else None,
        split=split,
        words=(1, 3),
        language=language,
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
    """Held-out scores of the run's final model (with its adapter, for a LoRA run)."""
    scores = json.loads(run(command("trainer"), "evaluate", "--store", dev, "--run", run_dir, "--json"))
    return dict(scores.get("adapter", scores.get("model")))


def train_seed(seed: int) -> int:
    """The training corpus's generator seed for a bench seed (11 for seed 0, as before seeds existed)."""
    return 11 + 100 * seed


def read_scores(store: Path, run_dir: Path, out: Path) -> list[dict[str, str]]:
    """`trainer score`'s table of `store` by `run_dir`, worst first."""
    run(command("trainer"), "score", "--store", store, "--run", run_dir, "--out", out)
    with out.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def one_seed(args: argparse.Namespace, seed: int, dev: Path) -> dict[str, Any]:
    """Steps 1-3 for one seed: its own corpus, scoring fit, and the two fits compared."""
    work = args.work / f"seed{seed}"
    train, planted = make_store(work, "train", args.shards, args.clips, train_seed(seed), args.mislabels, args.language)
    options = [*(LORA_RECIPE if args.finetune == "lora" else []), "--lr", args.lr, "--seed", seed]
    everything = work / "run-everything"
    seconds_everything = fit(train, dev, everything, args.steps, *options, base=args.base)
    scorer = everything
    if args.score_steps is not None:
        scorer = work / "run-score"
        fit(train, dev, scorer, args.score_steps, *options, base=args.base)
    scores = work / "scores.csv"
    rows = read_scores(train, scorer, scores)
    top = rows[: round(args.top * len(rows))]
    found = [r["audio_filepath"] for r in top if r["audio_filepath"] in planted]
    stored = [r["audio_filepath"] for r in rows if r["audio_filepath"] in planted]  # ingest rejects the shortest
    if args.select == "top":  # the table's worst rows, as an --exclude list
        excluded = [r["audio_filepath"] for r in top]
        (work / "worst.txt").write_text("".join(name + "\n" for name in excluded), encoding="utf-8")
        exclude = ["--exclude", work / "worst.txt"]
    else:
        excluded = [r["audio_filepath"] for r in rows if float(r["cer"]) > args.cer_above]
        exclude = ["--exclude-cer-above", args.cer_above, "--scores", scores]
    cleaned = work / "run-cleaned"
    seconds_cleaned = fit(train, dev, cleaned, args.steps, *options, *exclude, base=args.base)
    control = {}
    if args.control:
        clean = sorted(r["audio_filepath"] for r in rows if r["audio_filepath"] not in planted)
        left_out = random.Random(seed).sample(clean, len(excluded))
        (work / "control.txt").write_text("".join(name + "\n" for name in left_out), encoding="utf-8")
        fit(train, dev, work / "run-control", args.steps, *options, "--exclude", work / "control.txt", base=args.base)
        control = {"held_out_control": held_out(work / "run-control", dev)}
    return {
        "seed": seed,
        "corpus_seed": train_seed(seed),
        "utterances": len(rows),
        "planted": len(planted),
        "planted_in_store": len(stored),
        "planted_kinds": sorted(set(planted.values())),
        "top_rows": len(top),
        "recall_in_top": len(found) / len(stored) if stored else None,
        "planted_ranks": sorted(i for i, r in enumerate(rows) if r["audio_filepath"] in planted),
        "excluded": len(excluded),
        "excluded_planted": sum(name in planted for name in excluded),
        "held_out_everything": held_out(everything, dev),
        "held_out_cleaned": held_out(cleaned, dev),
        **control,
        "fit_seconds": [round(seconds_everything, 1), round(seconds_cleaned, 1)],
    }


def paired(results: list[dict[str, Any]], metric: str, against: str = "held_out_everything") -> dict[str, Any]:
    """Cleaned minus `against`, per seed, for a held-out `metric` (negative: cleaning is better)."""
    differences = [r["held_out_cleaned"][metric] - r[against][metric] for r in results]
    return {
        "differences": [round(d, 4) for d in differences],
        "mean": round(statistics.fmean(differences), 4),
        "median": round(statistics.median(differences), 4),
        "cleaning_wins": sum(d < 0 for d in differences),
        "ties": sum(d == 0 for d in differences),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cleaning-bench"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one corpus and pair of fits each")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--clips", type=int, default=60, help="clips per training shard")
    parser.add_argument("--dev-clips", type=int, default=60, help="clips of the held-out corpus")
    parser.add_argument("--mislabels", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--score-steps", type=int, help="score with a fit this short [default: the --steps fit]")
    parser.add_argument("--top", type=float, default=0.05, help="share of the table searched for planted clips")
    parser.add_argument("--select", choices=["top", "cer"], default="top", help="what the retrain leaves out")
    parser.add_argument("--cer-above", type=float, default=0.5, help="with --select cer: the CER threshold")
    parser.add_argument("--base", default="tiny-random", help="what every fit starts from, e.g. models/tone-a")
    parser.add_argument("--lr", default="1e-3")
    parser.add_argument("--language", choices=["a", "b"], default="a", help="the corpora's sample language")
    parser.add_argument("--finetune", choices=["full", "lora"], default="full", help="lora: the README's recipe")
    parser.add_argument("--control", action="store_true", help="also fit without as many random clean clips")
    parser.add_argument("--json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    dev, _ = make_store(args.work, "dev", 1, args.dev_clips, seed=12, mislabels=0.0, language=args.language)
    results = []
    for seed in args.seeds:
        results.append(one_seed(args, seed, dev))
        print(json.dumps(results[-1]), flush=True)
    result = {
        "settings": {name: getattr(args, name) for name in SETTINGS}
        | {"select": args.select if args.select == "top" else f"cer > {args.cer_above}"},
        "held_out_utterances": results[0]["held_out_everything"]["utterances"],
        "seeds": results,
        "cer": paired(results, "cer"),
        "wer": paired(results, "wer"),
        "recall_in_top": [r["recall_in_top"] for r in results],
    }
    if args.control:
        result["cer_against_control"] = paired(results, "cer", "held_out_control")
        result["wer_against_control"] = paired(results, "wer", "held_out_control")
    emit_json(result, args.json)


if __name__ == "__main__":
    main()
