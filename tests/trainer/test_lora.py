"""LoRA does the job it is for: adapting a pretrained base to a new language.

The base is ours (`models/tone-a`, rebuilt by `scripts/make_base`): tiny-random fully
fine-tuned on sample language a. Language b has other letters and another sound for each, so
the base's own CTC head is useless for it; the adapter (LoRA on the attention projections, plus
a new CTC head) has to learn the mapping. Trained the same way, LoRA on tiny-random cannot: its
frozen random front end is the limit (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from trainer.cli import main
from trainer.evaluate import evaluate_run
from trainer.fit import fit
from trainer.run import read_run

from helpers import tiny_lora_config

BASE = Path(__file__).parents[2] / "models" / "tone-a"
LORA_STEPS = "80"


def _fit_lora(stores, out: Path, base: Path | str) -> None:
    args = ["fit", "--store", stores.b_train, "--out", out, "--base-model", base, "--finetune", "lora"]
    args += ["--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0", "--batch-size", "16", "--grad-accum", "1"]
    args += ["--lr", "3e-3", "--warmup-ratio", "0.1", "--max-steps", LORA_STEPS, "--eval-steps", LORA_STEPS]
    args += ["--no-gradient-checkpointing", "--device", "cpu"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_lora_adapts_our_base_to_a_new_language(stores, tmp_path: Path, record_property) -> None:
    _fit_lora(stores, tmp_path / "adapted", BASE)
    _fit_lora(stores, tmp_path / "from-random", "tiny-random")

    adapted = evaluate_run(tmp_path / "adapted", stores.b_dev, "cpu")
    from_random = evaluate_run(tmp_path / "from-random", stores.b_dev, "cpu")["adapter"]
    trainable = read_run(tmp_path / "adapted")[1]["trainable_parameters"]
    numbers = {
        "lora_on_base_cer": adapted["adapter"].cer,
        "base_with_fresh_head_cer": adapted["base"].cer,
        "lora_on_tiny_random_cer": from_random.cer,
        "trainable_fraction": trainable["fraction"],
    }
    record_property("lora", numbers)
    print(f"\nLoRA test: {numbers}")
    assert trainable["fraction"] <= 0.10
    assert adapted["adapter"].cer <= 0.15
    assert adapted["adapter"].cer < adapted["base"].cer
    assert adapted["adapter"].cer < from_random.cer


def test_lora_on_a_base_with_another_vocabulary_size_saves_and_reloads(stores, tmp_path: Path) -> None:
    # `unseen` has 5 letters, the base's head 13 outputs: the head is new and sized for the run.
    fit(tiny_lora_config(stores.unseen, base_model=str(BASE), max_steps=2), tmp_path / "run")
    scores = evaluate_run(tmp_path / "run", stores.unseen, "cpu")
    assert scores["adapter"].utterances == scores["base"].utterances == 4
