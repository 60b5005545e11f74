"""The proof that it learns from scratch: `trainer fit` teaches tiny-random the tone language on a CPU.

Full fine-tuning with the convolutional front end trainable: a frozen *random* front end is
the limit LoRA cannot get past, so LoRA is shown learning on our pretrained base instead
(test_lora.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import Wav2Vec2ForCTC

from trainer.config import BatchOptions, TextOptions
from trainer.data import StoreDataset, make_loader
from trainer.inference import score, transcribe_batches
from trainer.run import RunDir
from trainer.stores import open_checked
from trainer.vocab import load_processor

STEPS = 150  # the blank-biased head leaves the CTC plateau after ~40 steps (400 were needed without it)


def _cer_of_untrained_model(run: RunDir, dev: Path) -> float:
    processor = load_processor(run.processor)
    model = Wav2Vec2ForCTC.from_pretrained(str(run.base))  # the random weights fit started from
    store = open_checked(dev)
    loader = make_loader(
        StoreDataset(dev, processor, TextOptions()), BatchOptions(batch_size=16).sampler(store, shuffle=False), 0
    )
    return score(transcribe_batches(model, loader, processor, torch.device("cpu"))).cer


@pytest.mark.slow
def test_tiny_random_full_finetune_learns_the_tone_language(stores, tmp_path: Path, record_property) -> None:
    trainer = str(Path(sys.executable).with_name("trainer"))
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    fit = subprocess.run(
        [
            trainer,
            "fit",
            "--store",
            str(stores.train),
            "--eval-store",
            str(stores.dev),
            "--out",
            str(out),
            "--base-model",
            "tiny-random",
            "--finetune",
            "full",
            "--train-feature-encoder",
            "--batch-size",
            "16",
            "--grad-accum",
            "1",
            "--lr",
            "1e-3",
            "--warmup-ratio",
            "0.05",
            "--schedule",
            "constant",
            "--max-steps",
            str(STEPS),
            "--eval-steps",
            str(STEPS // 2),
            "--logging-steps",
            "10",
            "--no-gradient-checkpointing",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    seconds = time.monotonic() - started
    assert fit.returncode == 0, fit.stderr[-3000:]

    evaluate = subprocess.run(
        [trainer, "evaluate", "--store", str(stores.dev), "--run", str(out), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    after = json.loads(evaluate.stdout)["model"]
    before = _cer_of_untrained_model(RunDir(out), stores.dev)
    numbers = {
        "cer_before": before,
        "cer_after": after["cer"],
        "wer_after": after["wer"],
        "fit_seconds": round(seconds, 1),
        "steps": STEPS,
        "dev_utterances": after["utterances"],
    }
    record_property("learning", numbers)
    print(f"\nlearning test: {numbers}")
    assert before >= 0.9
    assert after["cer"] <= 0.2
