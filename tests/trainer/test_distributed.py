"""`trainer fit` under torchrun and accelerate launch: two CPU processes, gloo, each rank its share of every epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.metrics import read_metrics
from trainer.run import RunDir

LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    # accelerate's multi-process launch is torchrun underneath; with no GPU, fit picks the CPU and gloo.
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    + ["--mixed_precision", "no", "--dynamo_backend", "no"],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_process_fit(launcher: str, stores, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable,
        *LAUNCHERS[launcher],
        "-m",
        "trainer.cli",
        "fit",
        "--store",
        str(stores.small),
        "--eval-store",
        str(stores.small),
        "--out",
        str(out),
        "--base-model",
        "tiny-random",
        "--lora-r",
        "4",
        "--batch-size",
        "2",
        "--grad-accum",
        "2",
        "--max-steps",
        "3",
        "--eval-steps",
        "2",
        "--logging-steps",
        "1",
        "--no-gradient-checkpointing",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = RunDir(out)
    meta = json.loads(run.run_file.read_text())
    assert meta["status"] == "finished" and meta["steps"] == 3
    assert [r["step"] for r in read_metrics(run.metrics) if "loss" in r] == [1, 2, 3]  # rank 0 alone writes
    assert (run.adapter / "adapter_model.safetensors").is_file()
    assert result.stdout.count("trainable parameters") == 1
    assert result.stdout.count("trained 3 steps") == 1  # one report, from rank 0
