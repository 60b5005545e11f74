"""What the length-grouped sampler will do with a store and batch settings, without a model."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from trainer.config import BatchOptions
from trainer.stores import open_checked


def plan_store(store_path: Path, batch: BatchOptions, seed: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Epoch-0 batch statistics, all ranks together, plus the store's size."""
    store = open_checked(store_path)
    plan = batch.sampler(store, seed=seed, world_size=world_size).plan()
    return {
        "utterances": len(store),
        "hours": float(store.durations.sum() / 3600),
        "batches_per_rank": plan.batches // world_size,
        **asdict(plan),
    }


def format_plan(plan: dict[str, Any]) -> list[str]:
    return [
        f"utterances          {plan['utterances']} ({plan['hours']:.2f} h)",
        f"batches per epoch   {plan['batches']} ({plan['batches_per_rank']} per rank)",
        f"batch seconds       mean {plan['mean_batch_seconds']:.1f}, largest {plan['max_batch_seconds']:.1f}",
        f"batch size          mean {plan['mean_batch_size']:.1f}, largest {plan['max_batch_size']}",
        f"largest batch       {plan['max_batch_samples']} padded samples",
        f"padding             {plan['padding_fraction']:.1%} of samples",
    ]
