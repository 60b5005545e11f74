"""How long the all-blank CTC plateau lasts: one `trainer.fit` run, evaluated every few steps.

Prints one JSON line: the settings, the parameter counts, and (step, seconds, eval CER) at each
evaluation, so runs that differ in one setting can be compared. `--blank-bias` starts from a
tiny-random model whose CTC head gives the blank that bias (`none`: all zero, as transformers
initialises it); the trainer's own tiny-random uses `trainer.model.BLANK_BIAS`.

    python bench/plateau.py runs/bias5 --train a_train.zarr --dev a_dev.zarr --blank-bias 5 --steps 300
    python bench/plateau.py runs/lora-b --train b_train.zarr --dev b_dev.zarr --base models/tone-a \
        --method lora --lr 3e-3 --warmup 0.1 --schedule linear --steps 150
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from featstore import open_store
from trainer.config import BatchOptions, FinetuneOptions, RunConfig, normalize_text
from trainer.fit import fit
from trainer.metrics import read_metrics
from trainer.model import tiny_config
from trainer.run import RunDir
from trainer.vocab import PAD, build_vocab


def biased_tiny_random(out: Path, train: str, dev: str, blank_bias: float | None) -> str:
    """Save tiny-random (seed 0) with the given blank bias and the run's vocab.json, so fit keeps its head."""
    from transformers import Wav2Vec2ForCTC

    vocab = build_vocab(normalize_text(t) for t in open_store(train).texts + open_store(dev).texts)
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(tiny_config(len(vocab), vocab[PAD]))
    with torch.no_grad():
        model.lm_head.bias.zero_()
        if blank_bias is not None:
            model.lm_head.bias[vocab[PAD]] = blank_bias
    model.save_pretrained(str(out))
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    return str(out.resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="run directory (replaced)")
    parser.add_argument("--train", required=True)
    parser.add_argument("--dev", required=True)
    parser.add_argument("--base", default="tiny-random", help="tiny-random, or a model directory")
    parser.add_argument("--blank-bias", help="a number or none: start from tiny-random with this blank bias")
    parser.add_argument("--method", choices=["full", "lora"], default="full")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=float, default=0.05)
    parser.add_argument("--schedule", choices=["linear", "constant"], default="constant")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = args.base
    if args.blank_bias is not None:
        bias = None if args.blank_bias == "none" else float(args.blank_bias)
        base = biased_tiny_random(args.out.with_name(args.out.name + "-base"), args.train, args.dev, bias)
    config = RunConfig(
        store=args.train,
        eval_store=args.dev,
        base_model=base,
        finetune=FinetuneOptions(
            method=args.method, lora_r=8, lora_alpha=16, lora_dropout=0.0, train_feature_encoder=args.method == "full"
        ),
        batch=BatchOptions(batch_size=args.batch_size),
        grad_accum=1,
        learning_rate=args.lr,
        warmup_ratio=args.warmup,
        schedule=args.schedule,
        max_steps=args.steps,
        eval_steps=args.eval_every,
        logging_steps=10,
        keep_best=1,
        gradient_checkpointing=False,
        mixed_precision=False,
        device="cpu",
    )
    started = time.monotonic()
    result = fit(config, args.out, overwrite=True, echo=lambda line: None)
    records = read_metrics(RunDir(args.out).metrics)
    seconds = {r["step"]: r["seconds"] for r in records if "seconds" in r}
    evaluations = [(r["step"], seconds.get(r["step"]), round(r["eval_cer"], 3)) for r in records if "eval_cer" in r]
    summary = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "trainable": result.trainable_parameters,
        "total": result.total_parameters,
        "seconds": round(time.monotonic() - started, 1),
        "evaluations": evaluations,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
