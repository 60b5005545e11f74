"""WER and CER of a trained run on a store, with the adapter and (LoRA) with it disabled.

The comparison is the notebook's: how much the adapter adds over the base model alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from peft import PeftModel
from transformers import Wav2Vec2Processor

from trainer.data import StoreDataset, make_loader
from trainer.errors import TrainerError
from trainer.inference import Scores, pick_device, score, transcribe_batches
from trainer.run import load_trained, read_run, run_config
from trainer.stores import check_scorable, open_checked
from trainer.vocab import load_processor, unseen_characters


def evaluate_run(
    run_path: Path,
    store_path: Path,
    device_name: str = "auto",
    workers: int = 0,
    warn: Callable[[str], None] = lambda message: None,
) -> dict[str, Scores]:
    """{"adapter": ..., "base": ...} for a LoRA run, {"model": ...} for a fully fine-tuned one.

    Characters of the store that the run's vocabulary lacks get a `warn` line naming them: the
    scores then include errors no training could avoid. A store written in none of the run's
    characters is refused (nothing in it could be scored).
    """
    store = open_checked(store_path, need_text=True)
    run, meta = read_run(run_path)
    texts = [run_config(meta).text.normalize(t) for t in store.texts]
    check_scorable(store_path, texts)
    check_alphabet(store_path, texts, load_processor(run.processor), warn)  # before the model loads
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


def check_alphabet(
    store_path: Path, texts: list[str], processor: Wav2Vec2Processor, warn: Callable[[str], None]
) -> None:
    unseen, share = unseen_characters(processor, texts)
    if not unseen:
        return
    named = " ".join(repr(c) for c in unseen)
    if share == 1:
        raise TrainerError(
            f"{store_path}: none of its characters are in the run's vocabulary ({named}); "
            "it is in another alphabet than the run was trained on, so nothing can be scored"
        )
    warn(
        f"warning: {store_path} has {len(unseen)} characters the run never saw ({named}), "
        f"{100 * share:.1f}% of its text; the model cannot write them and each counts as an error"
    )
