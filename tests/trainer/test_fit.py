"""The training loop: an interrupted run resumes exactly, past a damaged checkpoint; checkpoints, metrics, plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import trainer.fit
from trainer.cli import main
from trainer.fit import fit
from trainer.metrics import read_metrics
from trainer.model import trainable_state
from trainer.run import RunDir, read_run

from helpers import tiny_lora_config


def _stop_at(step: int):
    def on_step(current: int) -> None:
        if current == step:
            raise KeyboardInterrupt

    return on_step


def test_interrupted_fit_resumes_exactly(stores, tmp_path: Path) -> None:
    # Accumulation, LoRA dropout (RNG) and a prefetching worker: all must line up after resume.
    config = tiny_lora_config(
        stores.small, eval_store=str(stores.small), grad_accum=2, max_steps=6, eval_steps=2, workers=1, warmup_ratio=0.3
    )
    straight = fit(config, tmp_path / "straight")

    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "resumed", on_step=_stop_at(3))
    run = RunDir(tmp_path / "resumed")
    assert run.checkpoint_steps() == [2, 3]  # step 3 saved on the way out
    resumed = fit(tiny_lora_config(stores.small, max_steps=1), tmp_path / "resumed", resume=True)  # saved settings win

    assert resumed.steps == straight.steps == 6
    expected, actual = trainable_state(straight.model), trainable_state(resumed.model)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)
    losses = lambda path: [(r["step"], r["loss"]) for r in read_metrics(RunDir(path).metrics) if "loss" in r]  # noqa: E731
    assert [s for s, _ in losses(tmp_path / "resumed")] == list(range(1, 7))
    for (_, a), (_, b) in zip(losses(tmp_path / "resumed"), losses(tmp_path / "straight"), strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_a_run_interrupted_inside_a_step_resumes_exactly(stores, tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C during a forward pass: its dropout draws must not reach the checkpoint of the step before."""
    config = tiny_lora_config(stores.small, grad_accum=2, max_steps=6, eval_steps=10)
    straight = fit(config, tmp_path / "straight")

    real = trainer.fit.forward_backward
    calls = []

    def interrupted_in_step_4(*args, **kwargs):
        loss = real(*args, **kwargs)  # the forward pass has drawn its dropout masks
        calls.append(loss)
        if len(calls) == 7:  # the first batch of step 4 (two batches a step)
            raise KeyboardInterrupt
        return loss

    monkeypatch.setattr(trainer.fit, "forward_backward", interrupted_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "resumed")
    monkeypatch.setattr(trainer.fit, "forward_backward", real)
    assert RunDir(tmp_path / "resumed").checkpoint_steps() == [3]
    resumed = fit(config, tmp_path / "resumed", resume=True)
    expected, actual = trainable_state(straight.model), trainable_state(resumed.model)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)


def test_fit_keeps_best_checkpoints_metrics_and_plot(stores, tmp_path: Path) -> None:
    config = tiny_lora_config(stores.small, eval_store=str(stores.small), max_steps=8, eval_steps=2, keep_best=1)
    result = fit(config, tmp_path / "run")
    run, meta = read_run(tmp_path / "run")
    evaluations = [r for r in read_metrics(run.metrics) if "eval_wer" in r]
    assert [r["step"] for r in evaluations] == [2, 4, 6, 8]
    best = min(evaluations, key=lambda r: (r["eval_wer"], r["eval_cer"], -r["step"]))
    assert set(run.checkpoint_steps()) == {best["step"], 8}  # best K=1 plus the latest
    assert meta["status"] == "finished" and meta["final_step"] == best["step"] == result.final_step
    assert run.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run.processor / "vocab.json").is_file() and (run.adapter / "adapter_model.safetensors").is_file()
    assert json.loads(run.run_file.read_text())["config"]["finetune"]["lora_r"] == 8


def _resume_on_the_command_line(out: Path):
    result = CliRunner().invoke(main, ["fit", "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result


def test_resume_falls_back_past_a_truncated_checkpoint(stores, tmp_path: Path) -> None:
    out = tmp_path / "run"
    fit(tiny_lora_config(stores.small, max_steps=4, eval_steps=2), out)
    run = RunDir(out)
    assert run.checkpoint_steps() == [2, 4]
    latest = run.checkpoint(4) / "state.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # a copy cut short

    result = _resume_on_the_command_line(out)

    assert f"warning: {run.checkpoint(4)} is unreadable" in result.output
    assert "resuming at step 2" in result.output
    assert "trained 2 steps (steps 3-4)" in result.output
    assert run.checkpoint_steps() == [2, 4]
    torch.load(latest, weights_only=False)  # step 4 trained again and written whole
    assert [r["step"] for r in read_metrics(run.metrics) if "loss" in r] == [1, 2, 3, 4]


def test_resume_without_checkpoints_says_it_starts_from_step_zero(stores, tmp_path: Path) -> None:
    out = tmp_path / "run"
    fit(tiny_lora_config(stores.small, max_steps=2, eval_steps=2), out)
    shutil.rmtree(RunDir(out).checkpoints)

    result = _resume_on_the_command_line(out)

    assert f"no readable checkpoint in {out}; starting from step 0" in result.output
    assert read_run(out)[1]["steps"] == 2
    assert [r["step"] for r in read_metrics(RunDir(out).metrics) if "loss" in r] == [1, 2]


def test_resume_reads_a_checkpoint_of_the_earlier_format(stores, tmp_path: Path) -> None:
    config = tiny_lora_config(stores.small, grad_accum=2, max_steps=4, eval_steps=2)
    straight = fit(config, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "resumed", on_step=_stop_at(2))
    latest = RunDir(tmp_path / "resumed").checkpoint(2) / "state.pt"
    state = torch.load(latest, weights_only=False)
    sampler = state["sampler"]  # as the trainer before the sampler's resume() wrote it:
    state["sampler"] = {"epoch": sampler["epoch"], "yielded": sampler["batches_trained"], "seed": sampler["seed"]}
    state["progress"].update(epoch=sampler["epoch"], batches_done=sampler["batches_trained"])
    torch.save(state, latest)

    resumed = fit(config, tmp_path / "resumed", resume=True)

    for key, tensor in trainable_state(straight.model).items():
        torch.testing.assert_close(trainable_state(resumed.model)[key], tensor, rtol=0, atol=1e-6, msg=key)
