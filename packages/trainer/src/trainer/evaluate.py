"""WER and CER of a trained run on a store, with the adapter and (LoRA) with it disabled.

The comparison is the notebook's: how much the adapter adds over the base model alone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel

from trainer.data import StoreDataset, make_loader
from trainer.inference import Scores, pick_device, score, transcribe_batches
from trainer.run import load_trained
from trainer.stores import open_checked


def evaluate_run(run_path: Path, store_path: Path, device_name: str = "auto", workers: int = 0) -> dict[str, Scores]:
    """{"adapter": ..., "base": ...} for a LoRA run, {"model": ...} for a fully fine-tuned one."""
    store = open_checked(store_path, need_text=True)
    device = pick_device(device_name)
    model, processor, config = load_trained(run_path, device)
    dataset = StoreDataset(store_path, processor, config.text)

    def scores_of(module: torch.nn.Module) -> Scores:
        loader = make_loader(dataset, config.batch.sampler(store, shuffle=False), workers)
        return score(transcribe_batches(module, loader, processor, device))

    if isinstance(model, PeftModel):
        adapted = scores_of(model)
        with model.disable_adapter():
            base = scores_of(model)
        return {"adapter": adapted, "base": base}
    return {"model": scores_of(model)}
