"""Small real configurations shared by the tests (a factory, not a mock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.config import BatchOptions, FinetuneOptions, RunConfig


def tiny_lora_config(store: Path, **overrides: Any) -> RunConfig:
    """A few seconds of LoRA training of tiny-random on CPU."""
    settings: dict[str, Any] = {
        "store": str(store),
        "base_model": "tiny-random",
        "finetune": FinetuneOptions(lora_r=8, lora_alpha=16),
        "batch": BatchOptions(batch_size=3),
        "grad_accum": 1,
        "learning_rate": 1e-2,
        "warmup_ratio": 0.0,
        "max_steps": 6,
        "eval_steps": 3,
        "logging_steps": 1,
        "gradient_checkpointing": False,
        "device": "cpu",
        **overrides,
    }
    return RunConfig(**settings)
