"""LoRA correctness on a tiny random wav2vec2: what trains, that it learns, that it reloads."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import Wav2Vec2ForCTC

from trainer.config import FinetuneOptions, TextOptions
from trainer.data import StoreDataset, collate, model_inputs
from trainer.fit import fit
from trainer.metrics import read_metrics
from trainer.model import build_tiny_random, count_parameters, prepare
from trainer.run import RunDir, load_trained

from helpers import tiny_lora_config


def _base_key(peft_key: str) -> str:
    """The base model's name for a frozen tensor inside the PeftModel."""
    return peft_key.removeprefix("base_model.model.").replace(".base_layer", "").replace(".original_module", "")


def test_lora_trains_only_adapter_and_head_and_reloads_identically(stores, tmp_path: Path) -> None:
    result = fit(tiny_lora_config(stores.small, max_steps=12, eval_steps=12), tmp_path / "run")
    run = RunDir(tmp_path / "run")
    base = Wav2Vec2ForCTC.from_pretrained(str(run.base)).state_dict()
    state = result.model.state_dict()

    for key, tensor in state.items():
        if "lora_" not in key and "modules_to_save" not in key:
            assert torch.equal(tensor, base[_base_key(key)]), f"{key} changed"
    lora_b = [tensor for key, tensor in state.items() if "lora_B" in key]
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b)  # B starts at zero
    assert not torch.equal(state["base_model.model.lm_head.modules_to_save.default.weight"], base["lm_head.weight"])

    losses = [r["loss"] for r in read_metrics(run.metrics) if "loss" in r]
    # The blank-biased head starts near the all-blank loss, so 12 steps lower it by ~10%, not more.
    assert sum(losses[-3:]) / 3 < losses[0] * 0.95

    # The adapter directory alone, with stock peft, gives the trained model's outputs.
    adapter_config = json.loads((run.adapter / "adapter_config.json").read_text())
    base_model = Wav2Vec2ForCTC.from_pretrained(adapter_config["base_model_name_or_path"])
    reloaded = PeftModel.from_pretrained(base_model, str(run.adapter)).eval()
    model, processor, _ = load_trained(run.path, torch.device("cpu"))
    batch = collate([StoreDataset(stores.small, processor, TextOptions())[i] for i in range(3)])
    inputs = model_inputs(batch, "cpu", labels=False)
    with torch.no_grad():
        expected = result.model.eval()(**inputs).logits
        assert torch.equal(reloaded(**inputs).logits, expected)
        assert torch.equal(model(**inputs).logits, expected)


def test_parameter_counts_for_lora_and_full() -> None:
    lora = prepare(build_tiny_random(13, 12, seed=0), FinetuneOptions())
    trainable, total = count_parameters(lora)
    head = 128 * 13 + 13
    lora_params = 3 * 2 * (2 * 128 * 32)  # 3 layers x (q, v) x (A + B) at r=32
    assert trainable == lora_params + head
    full = prepare(build_tiny_random(13, 12, seed=0), FinetuneOptions(method="full"))
    full_trainable, full_total = count_parameters(full)
    assert full_trainable < full_total  # the convolutional feature encoder stays frozen
    assert full_total == total - lora_params - head  # LoRA adds A/B and a copy of the head


def test_gradient_checkpointing_still_trains_the_adapter(stores, tmp_path: Path) -> None:
    # The feature encoder is frozen, so its output needs no grad: reentrant checkpointing would
    # then silently give LoRA no gradient.
    result = fit(tiny_lora_config(stores.small, gradient_checkpointing=True, max_steps=2), tmp_path / "run")
    lora_b = [tensor for key, tensor in result.model.state_dict().items() if "lora_B" in key]
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b)
