"""Small real configurations shared by the tests (a factory, not a mock), and running the command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from trainer.cli import main
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


def invoke(*args: str | Path) -> Result:
    """`trainer ARGS...` in this process, its stdout and stderr apart."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_user_error(result: Result, *words: str) -> None:
    """Exit status 2 and exactly one `error:` line on stderr that holds every one of `words`."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
