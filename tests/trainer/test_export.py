"""Export: the merged model runs in transformers.pipeline and matches the adapter's outputs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCTC, pipeline

from featstore import open_store
from trainer.data import StoreDataset, collate, model_inputs
from trainer.export import export_run
from trainer.fit import fit
from trainer.run import load_trained

from helpers import tiny_lora_config


def test_export_merges_adapter_into_a_pipeline_ready_model(stores, tmp_path: Path) -> None:
    config = tiny_lora_config(stores.small, max_steps=4)
    fit(config, tmp_path / "run")
    out = export_run(tmp_path / "run", tmp_path / "merged")

    store = open_store(stores.small)
    recognizer = pipeline("automatic-speech-recognition", model=str(out), device="cpu")
    result = recognizer({"raw": store.audio(0), "sampling_rate": store.sample_rate})
    assert isinstance(result["text"], str)

    adapted, processor, _ = load_trained(tmp_path / "run", torch.device("cpu"))
    merged = AutoModelForCTC.from_pretrained(str(out)).eval()
    batch = collate([StoreDataset(stores.small, processor, config.text)[i] for i in range(3)])
    inputs = model_inputs(batch, "cpu", labels=False)
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapted(**inputs).logits, rtol=1e-4, atol=1e-4)
    assert not any("lora" in name for name, _ in merged.named_parameters())
