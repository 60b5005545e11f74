"""Merge a run's adapter into its base and save a standalone model directory.

The result loads with `AutoModelForCTC.from_pretrained(DIR)` and with
`transformers.pipeline("automatic-speech-recognition", model=DIR)`: no peft needed to use it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from peft import PeftModel

from trainer.claims import EXPORT_MARKER, check_export_deletable, claim_output_dir
from trainer.run import load_trained, read_run, run_config


def export_run(run_path: Path, out: Path, overwrite: bool = False) -> Path:
    """Write model + processor to `out` (built beside it, then renamed into place).

    `out` may not be, hold or lie in the run or its inputs; an existing one is replaced only
    with `overwrite` and only when it is an export (`trainer.claims`).
    """
    out = Path(os.path.abspath(out))  # "." names the directory it is
    _, meta = read_run(run_path)
    claim_output_dir(out, [run_path, *run_config(meta).input_paths()], overwrite, check_export_deletable)
    model, processor, _ = load_trained(run_path, torch.device("cpu"))
    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
    partial = out.with_name(f"{out.name}.{uuid.uuid4().hex[:8]}.partial")
    merged.save_pretrained(str(partial))  # type: ignore[operator]
    processor.save_pretrained(str(partial))
    marker = {"format": "trainer-export", "format_version": 1, "run": str(run_path.absolute())}
    (partial / EXPORT_MARKER).write_text(json.dumps(marker, indent=1, ensure_ascii=False), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out
