"""Merge a run's adapter into its base and save a standalone model directory.

The result loads with `AutoModelForCTC.from_pretrained(DIR)` and with
`transformers.pipeline("automatic-speech-recognition", model=DIR)`: no peft needed to use it.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import torch
from peft import PeftModel

from trainer.errors import TrainerError
from trainer.run import load_trained


def export_run(run_path: Path, out: Path, overwrite: bool = False) -> Path:
    """Write model + processor to `out` (built beside it, then renamed into place)."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TrainerError(f"{out} already exists; pass --overwrite to replace it")
    model, processor, _ = load_trained(run_path, torch.device("cpu"))
    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
    partial = out.with_name(f"{out.name}.{uuid.uuid4().hex[:8]}.partial")
    merged.save_pretrained(str(partial))  # type: ignore[operator]
    processor.save_pretrained(str(partial))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out
