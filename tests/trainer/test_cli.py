"""The `trainer` command: plan, evaluate, transcribe, and one-line errors for each bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from featstore import open_store
from trainer.fit import fit
from trainer.run import RunDir

from helpers import assert_user_error, invoke, tiny_lora_config


@pytest.fixture(scope="module")
def lora_run(stores, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    fit(tiny_lora_config(stores.small, max_steps=3), out)
    return out


def test_plan_json_has_padding_fraction(stores) -> None:
    result = invoke("plan", "--store", stores.train, "--max-batch-seconds", 20, "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert 0 <= plan["padding_fraction"] < 0.2
    assert plan["utterances"] == len(open_store(stores.train))
    assert plan["max_batch_seconds"] <= 20
    text = invoke("plan", "--store", stores.train, "--batch-size", 4)
    assert "padding" in text.stdout and "batches per epoch" in text.stdout


def test_evaluate_reports_adapter_and_base(stores, lora_run: Path) -> None:
    result = invoke("evaluate", "--store", stores.small, "--run", lora_run, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert set(scores) == {"adapter", "base"}
    assert scores["adapter"]["utterances"] == len(open_store(stores.small))


def test_evaluate_names_the_characters_the_run_never_saw(stores, lora_run: Path) -> None:
    result = invoke("evaluate", "--store", stores.unseen, "--run", lora_run, "--json")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "characters the run never saw" in warnings[0], result.stderr
    assert "'k'" in warnings[0] and "'l'" in warnings[0] and "'h'" not in warnings[0]
    assert json.loads(result.stdout)["adapter"]["utterances"] == 4  # still scored


def test_evaluate_refuses_a_store_in_another_alphabet(stores, lora_run: Path) -> None:
    result = invoke("evaluate", "--store", stores.b_small, "--run", lora_run)
    assert_user_error(result, "none of its characters are in the run's vocabulary", "nothing can be scored")


def test_transcribe_works_without_text(stores, lora_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "predictions.csv"
    result = invoke("transcribe", "--store", stores.no_text, "--run", lora_run, "--out", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    store = open_store(stores.no_text)
    assert len(rows) == len(store)
    assert list(rows[0])[0] == "audio_filepath" and list(rows[0])[-1] == "prediction"
    assert {"gender", "creator_id", "duration", "text"} <= set(rows[0])
    assert [r["audio_filepath"] for r in rows] == [store.record(i)["audio_filepath"] for i in range(len(store))]
    assert all(r["text"] == "" for r in rows)


def test_missing_store(tmp_path: Path) -> None:
    assert_user_error(invoke("fit", "--store", tmp_path / "nope.zarr", "--out", tmp_path / "run"), "no such store")


def test_directory_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("hello")
    assert_user_error(invoke("plan", "--store", tmp_path / "junk"), "not a featstore store")


def test_empty_store(stores, tmp_path: Path) -> None:
    assert_user_error(invoke("fit", "--store", stores.empty, "--out", tmp_path / "run"), "no utterances")
    assert not (tmp_path / "run").exists()


def test_store_without_text(stores, tmp_path: Path) -> None:
    assert_user_error(
        invoke("fit", "--store", stores.no_text, "--out", tmp_path / "run", "--base-model", "tiny-random"), "text"
    )
    assert_user_error(invoke("evaluate", "--store", stores.no_text, "--run", tmp_path / "run"), "text")


def test_unknown_base_model(stores, tmp_path: Path) -> None:
    assert_user_error(
        invoke("fit", "--store", stores.small, "--out", tmp_path / "run", "--base-model", "no-such-org/no-such-model"),
        "no-such-org/no-such-model",
    )
    assert_user_error(
        invoke("fit", "--store", stores.small, "--out", tmp_path / "run", "--base-model", tmp_path / "no-model"),
        "does not exist",
    )
    assert not (tmp_path / "run").exists()


def test_incompatible_or_missing_run_dir(stores, lora_run: Path, tmp_path: Path) -> None:
    assert_user_error(invoke("evaluate", "--store", stores.small, "--run", tmp_path), "not a trainer run directory")
    old = tmp_path / "old"
    old.mkdir()
    meta = json.loads(RunDir(lora_run).run_file.read_text())
    (old / "run.json").write_text(json.dumps({**meta, "format_version": 999}))
    assert_user_error(invoke("export", "--run", old, "--out", tmp_path / "merged"), "version 999")
    assert_user_error(invoke("fit", "--out", old, "--resume"), "version 999")


def test_existing_run_dir_is_not_overwritten(stores, lora_run: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in lora_run.rglob("*")}
    assert_user_error(
        invoke("fit", "--store", stores.small, "--out", lora_run, "--base-model", "tiny-random"), "--overwrite"
    )
    assert {p: p.stat().st_mtime_ns for p in lora_run.rglob("*")} == before


def test_overwrite_refuses_a_directory_that_is_not_a_run(stores, tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert_user_error(
        invoke("fit", "--store", stores.small, "--out", tmp_path, "--base-model", "tiny-random", "--overwrite"),
        "not a trainer run directory",
    )
    assert (tmp_path / "precious.txt").exists()


def test_console_script_prints_one_line_and_exits_nonzero(tmp_path: Path) -> None:
    trainer = Path(sys.executable).with_name("trainer")
    result = subprocess.run(
        [str(trainer), "plan", "--store", str(tmp_path / "missing.zarr")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.zarr'}: no such store"]


def test_an_output_the_system_refuses_is_one_line(stores, lora_run: Path) -> None:
    """A run directory where none can be made, and a CSV into a read-only place: `error:`, exit 2."""
    fit_result = invoke("fit", "--store", stores.small, "--out", "/proc/no-run-here", "--base-model", "tiny-random")
    assert_user_error(fit_result, "/proc/no-run-here")
    csv_result = invoke("transcribe", "--store", stores.small, "--run", lora_run, "--out", "/proc/predictions.csv")
    assert csv_result.exit_code == 2 and "Traceback" not in csv_result.stderr  # (transformers' load bar before it)
    last = csv_result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "/proc/predictions.csv" in last
