"""The run directory: a versioned contract between `fit` and evaluate/transcribe/export.

runs/x/
  run.json          {"format": "trainer-run", "format_version": 1, "config": {...}, "final": ...}
  processor/        the Wav2Vec2Processor (vocab.json, tokenizer and feature-extractor configs)
  base/             the tiny-random base weights (hub and local bases are referenced by name)
  adapter/          LoRA: the final adapter + CTC head, loadable with PeftModel.from_pretrained
  model/            --finetune full: the final model and processor, loadable with from_pretrained
  checkpoints/step-NNNNNN/state.pt   resumable training state (best K by eval WER + the latest)
  metrics.jsonl, metrics.png
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCTC, PreTrainedModel, Wav2Vec2ForCTC, Wav2Vec2Processor

from featstore.storage import finite
from trainer.augment import masking_config
from trainer.claims import check_run_deletable, claim_output_dir
from trainer.config import TINY_RANDOM, RunConfig, mistyped
from trainer.errors import TrainerError
from trainer.model import load_adapter, load_base
from trainer.vocab import load_processor

FORMAT_NAME = "trainer-run"
FORMAT_VERSION = 1
RUN_FILE = "run.json"
CHECKPOINT_NAME = re.compile(r"step-(\d{6,})")  # what RunDir.checkpoint names; anything else is not one


@dataclass(frozen=True)
class RunDir:
    """Paths inside a run directory."""

    path: Path

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def processor(self) -> Path:
        return self.path / "processor"

    @property
    def base(self) -> Path:
        return self.path / "base"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def plot(self) -> Path:
        return self.path / "metrics.png"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:06d}"

    def checkpoint_steps(self) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        steps = (CHECKPOINT_NAME.fullmatch(p.name) for p in self.checkpoints.iterdir() if (p / "state.pt").is_file())
        return sorted(int(match.group(1)) for match in steps if match is not None)


def read_run(path: Path) -> tuple[RunDir, dict[str, Any]]:
    """Open a run directory written by a compatible trainer, or fail with one line."""
    run = RunDir(Path(path))
    if not run.run_file.is_file():
        raise TrainerError(f"{path}: not a trainer run directory (no {RUN_FILE}); train one with trainer fit")
    try:
        meta = json.loads(run.run_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TrainerError(f"{run.run_file}: not valid JSON; the run directory is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise TrainerError(f"{path}: {RUN_FILE} is not a trainer run description")
    if meta.get("format_version") != FORMAT_VERSION:
        raise TrainerError(
            f"{path}: run format version {meta.get('format_version')} is not supported by this trainer "
            f"(format {FORMAT_VERSION}); use the trainer version that wrote it or train again"
        )
    try:
        config = RunConfig.from_json(meta["config"])
    except (KeyError, TypeError, AttributeError) as error:
        raise TrainerError(f"{path}: {RUN_FILE} does not match this trainer's settings ({error})") from None
    wrong = mistyped(config, RunConfig, "config")
    if wrong:
        raise TrainerError(f"{path}: {RUN_FILE} has a value of the wrong type in {wrong}; the run directory is damaged")
    return run, meta


def run_config(meta: dict[str, Any]) -> RunConfig:
    return RunConfig.from_json(meta["config"])


def write_run_file(run: RunDir, config: RunConfig, **extra: Any) -> None:
    """Write run.json atomically (a reader never sees half of it)."""
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": config.to_json(), **extra}
    write_atomic(run.run_file, json.dumps(finite(meta), indent=1, ensure_ascii=False, allow_nan=False).encode("utf-8"))


def write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def claim_run_dir(path: Path, resume: bool, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse to clobber: a new run needs a missing or empty directory unless --overwrite.

    --overwrite only deletes a run directory of ours (`trainer.claims`), and no run directory may
    be, hold or lie inside one of the run's `inputs`.
    """
    if resume:
        read_run(path)
        return
    claim_output_dir(path, inputs, overwrite, check_run_ours, " or --resume to continue it")


def check_run_ours(path: Path) -> None:
    """Refuse to delete `path` unless a trainer wrote its run.json and everything in it."""
    if not is_run_description(RunDir(path).run_file):
        raise TrainerError(f"{path} is not a trainer run directory; refusing to delete it with --overwrite")
    check_run_deletable(path)


def is_run_description(run_file: Path) -> bool:
    """Whether `run_file` is a run.json that a trainer wrote (any format version)."""
    try:
        meta = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT_NAME


def interrupted_message(path: Path, training_started: bool) -> str:
    """What to do after Ctrl-C stopped `trainer fit` on the run in `path`."""
    if not training_started:
        return f"interrupted before training started; {path} is as it was"
    steps = RunDir(path).checkpoint_steps()
    if steps:
        return f"interrupted: step {steps[-1]} is checkpointed; continue with trainer fit --out {path} --resume"
    return f"interrupted before the first step; trainer fit --out {path} --resume starts it from step 0"


def load_base_for_run(run: RunDir, config: RunConfig, processor: Wav2Vec2Processor) -> PreTrainedModel:
    """The base model a run started from: saved tiny-random weights or the named base."""
    if config.base_model == TINY_RANDOM:
        return Wav2Vec2ForCTC.from_pretrained(str(run.base.resolve()))
    return load_base(config.base_model, processor.tokenizer.get_vocab(), **masking_config(config.augment))


def load_trained(path: Path, device: torch.device) -> tuple[torch.nn.Module, Wav2Vec2Processor, RunConfig]:
    """The final model of a finished run (PeftModel for LoRA), in eval mode, and its processor."""
    run, meta = read_run(path)
    config = run_config(meta)
    final = run.adapter if config.finetune.method == "lora" else run.model
    if not final.is_dir():
        raise TrainerError(f"{path}: the run has no final weights ({final.name}/); finish it with trainer fit --resume")
    processor = load_processor(run.processor)
    if config.finetune.method == "lora":
        model: torch.nn.Module = load_adapter(load_base_for_run(run, config, processor), final)
    else:
        model = AutoModelForCTC.from_pretrained(str(final))
    return model.to(device).eval(), processor, config
