"""What the trainer may delete or replace (`trainer.claims`), and the settings it refuses.

Each case is one a hostile user tried: an output that would have lost the user's data, or an
input that crashed the command or silently changed what it trained.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import trainer.fit
from trainer.config import RunConfig, TextOptions
from trainer.errors import TrainerError
from trainer.exclude import Exclusion
from trainer.fit import SetupInterrupted, fit
from trainer.run import RunDir, interrupted_message
from trainer.stores import check_scorable

from helpers import assert_user_error, invoke, tiny_lora_config

TINY = ("--base-model", "tiny-random", "--batch-size", "3", "--grad-accum", "1", "--device", "cpu")
TINY_FIT = (*TINY, "--max-steps", "1", "--no-gradient-checkpointing", "--logging-steps", "1")


@pytest.fixture(scope="module")
def run_dir(stores, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("claims") / "run"
    fit(tiny_lora_config(stores.small, max_steps=1), out)
    return out


def digest(path: Path) -> dict[str, str]:
    """Every file under `path` (or `path` itself) by its content."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def copy_run(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    return to


def test_overwrite_refuses_a_run_json_that_a_trainer_did_not_write(stores, tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text('{"my": "notes"}')
    (tmp_path / "results.txt").write_text("keep me")
    before = digest(tmp_path)
    result = invoke("fit", "--store", stores.small, "--out", tmp_path, *TINY_FIT, "--overwrite")
    assert_user_error(result, "not a trainer run directory")
    assert digest(tmp_path) == before


def test_overwrite_refuses_a_run_that_holds_anything_else(stores, run_dir: Path, tmp_path: Path) -> None:
    run = copy_run(run_dir, tmp_path / "run")
    (run / "notes.txt").write_text("my notes on this run")
    before = digest(run)
    result = invoke("fit", "--store", stores.small, "--out", run, *TINY_FIT, "--overwrite")
    assert_user_error(result, "'notes.txt'", "no trainer run writes")
    assert digest(run) == before


def test_a_run_may_not_hold_or_lie_in_its_store(stores, run_dir: Path, tmp_path: Path) -> None:
    run = copy_run(run_dir, tmp_path / "run")
    store = shutil.copytree(stores.small, run / "feats.zarr")
    before = digest(run)
    assert_user_error(invoke("fit", "--store", store, "--out", run, *TINY_FIT, "--overwrite"), "holds the input")
    assert digest(run) == before
    inside = invoke("fit", "--store", store, "--out", store / "run", *TINY_FIT)
    assert_user_error(inside, "lies inside the input")
    assert not (store / "run").exists()


def test_a_table_replaces_only_a_table_of_its_kind(stores, run_dir: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    store = shutil.copytree(stores.small, tmp_path / "feats.zarr")
    before = {**digest(notes), **digest(store), **digest(run_dir)}
    for command in ("score", "transcribe"):
        assert_user_error(invoke(command, "--store", store, "--run", run_dir, "--out", notes), "is not a")
        assert_user_error(
            invoke(command, "--store", store, "--run", run_dir, "--out", store / "zarr.json"), "inside the input"
        )
        assert_user_error(
            invoke(command, "--store", store, "--run", run_dir, "--out", run_dir / "run.json"), "is not a"
        )
        folder = tmp_path / "tables"
        folder.mkdir(exist_ok=True)
        assert_user_error(invoke(command, "--store", store, "--run", run_dir, "--out", folder), "is a directory")
    if Path("/dev/null").exists():
        assert_user_error(
            invoke("score", "--store", store, "--run", run_dir, "--out", "/dev/null"), "not a regular file"
        )
    assert {**digest(notes), **digest(store), **digest(run_dir)} == before
    assert not list(tmp_path.rglob("*.partial"))
    # A table of its own kind is replaced, beside the run's files too.
    scores = run_dir.parent / "scores.csv"
    for _ in range(2):
        assert invoke("score", "--store", store, "--run", run_dir, "--out", scores).exit_code == 0
    assert scores.read_text().startswith("index,audio_filepath,loss_per_char,")


@pytest.mark.parametrize(
    "option",
    [
        ("--lr", "nan"),
        ("--lr", "-1"),
        ("--max-batch-seconds", "inf"),
        ("--max-grad-norm", "nan"),
        ("--augment-snr-db", "nan", "10"),
        ("--augment-gain-db", "1000", "1000"),
        ("--augment-noise-prob", "nan"),
        ("--mask-time-prob", "nan"),
    ],
)
def test_numbers_that_are_not_finite_or_in_range_are_refused(stores, tmp_path: Path, option) -> None:
    result = invoke("fit", "--store", stores.small, "--out", tmp_path / "run", *TINY_FIT, *option)
    assert_user_error(result, option[0])
    assert not (tmp_path / "run").exists()


def test_exclusion_indices_are_ascii_digits(stores, tmp_path: Path) -> None:
    for entry in ("²", "١"):  # str.isdigit takes both; int() refuses the first and reads the second as 1
        listing = tmp_path / "exclude.txt"
        listing.write_text(entry + "\n", encoding="utf-8")
        result = invoke("fit", "--store", stores.small, "--out", tmp_path / "run", *TINY_FIT, "--exclude", listing)
        assert_user_error(result, repr(entry))
    with pytest.raises(TrainerError, match="the run's store has changed"):
        Exclusion((0, 999), "bad.txt").kept(10)


def test_resume_refuses_settings_it_would_ignore(run_dir: Path) -> None:
    before = digest(run_dir)
    result = invoke("fit", "--out", run_dir, "--resume", "--lr", "5", "--max-steps", "90")
    assert_user_error(result, "--lr", "--max-steps", "saved settings")
    assert digest(run_dir) == before


def test_overwrite_keeps_the_old_run_until_the_new_one_is_set_up(
    stores, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A setting that fails in the setup (a LoRA target the model lacks), or Ctrl-C there, leaves the
    old run whole and no staging directory behind."""
    run = copy_run(run_dir, tmp_path / "run")
    before = digest(run)
    options = (*TINY_FIT, "--overwrite", "--lora-targets", "nosuch")
    bad_target = invoke("fit", "--store", stores.small, "--out", run, *options)
    assert bad_target.exit_code == 2 and "Traceback" not in bad_target.stderr
    assert digest(run) == before

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.fit, "build_data", interrupt)
    with pytest.raises(SetupInterrupted):
        fit(tiny_lora_config(stores.small, max_steps=1), run, overwrite=True)
    assert digest(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    said = interrupted_message(run, training_started=False)
    assert said == f"interrupted before training started; {run} is as it was"
    assert "--resume" in interrupted_message(run_dir, training_started=True)


def test_run_json_records_absolute_paths(stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run made with relative paths means the same from any directory (evaluate, --resume)."""
    monkeypatch.chdir(stores.small.parent)
    config = RunConfig(store=stores.small.name, eval_store=stores.small.name, base_model="tiny-random")
    absolute = config.with_absolute_paths()
    assert absolute.store == absolute.eval_store == str(stores.small)
    assert absolute.base_model == "tiny-random"
    assert RunConfig(store="s3://bucket/feats.zarr").with_absolute_paths().store == "s3://bucket/feats.zarr"


def test_noise_from_the_training_store_is_warned_of(stores, tmp_path: Path) -> None:
    store = shutil.copytree(stores.small, tmp_path / "feats.zarr")
    result = invoke("fit", "--store", store, "--out", store / "run", *TINY_FIT, "--augment-noise-store", store)
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "warning: --augment-noise-store is the training store: its speech becomes the noise"
    assert result.exit_code == 2 and lines[-1].startswith("error: ") and "inside the input" in lines[-1]


def test_a_diverging_run_is_warned_of_once(stores, tmp_path: Path) -> None:
    said: list[str] = []
    fit(
        tiny_lora_config(stores.small, learning_rate=1e8, max_steps=4, eval_steps=4), tmp_path / "run", echo=said.append
    )
    warnings = [line for line in said if line.startswith("warning: the training loss is")]
    assert len(warnings) == 1 and "diverged" in warnings[0], said


def test_overwrite_looks_inside_what_it_would_delete(stores, run_dir: Path, tmp_path: Path) -> None:
    """A run.json copied into a user's folder does not make the files below it the trainer's."""
    fake = tmp_path / "fake"
    (fake / "model").mkdir(parents=True)
    shutil.copy(RunDir(run_dir).run_file, fake / "run.json")
    (fake / "model" / "thesis.tex").write_text("mine")
    (fake / "notes.partial").write_text("mine too")
    before = digest(fake)
    result = invoke("fit", "--store", stores.small, "--out", fake, *TINY_FIT, "--overwrite")
    assert_user_error(result, "'notes.partial'")
    (fake / "notes.partial").unlink()
    result = invoke("fit", "--store", stores.small, "--out", fake, *TINY_FIT, "--overwrite")
    assert_user_error(result, "thesis.tex", "never writes")
    assert digest(fake) == {k: v for k, v in before.items() if not k.endswith("notes.partial")}


def test_export_replaces_only_an_export(stores, run_dir: Path, tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    store = shutil.copytree(stores.small, tmp_path / "feats.zarr")
    before = {**digest(user), **digest(store), **digest(run_dir)}
    for out, words in (
        (user, ("not a trainer export",)),
        (store, ("not a trainer export",)),
        (run_dir, ("lies inside the input",)),
        (run_dir / "adapter", ("lies inside the input",)),
        (run_dir.parent, ("holds the input",)),
    ):
        assert_user_error(invoke("export", "--run", run_dir, "--out", out, "--overwrite"), *words)
    assert {**digest(user), **digest(store), **digest(run_dir)} == before
    merged = tmp_path / "merged"
    for _ in range(2):  # an export is replaced by the next
        assert invoke("export", "--run", run_dir, "--out", merged, "--overwrite").exit_code == 0
    assert json.loads((merged / "trainer-export.json").read_text())["run"] == str(run_dir)
    (merged / "my-eval.csv").write_text("mine")
    assert_user_error(invoke("export", "--run", run_dir, "--out", merged, "--overwrite"), "my-eval.csv")


def test_seeds_and_world_sizes_out_of_range_are_one_line(stores, tmp_path: Path) -> None:
    for seed in ("-1", str(2**32)):
        assert_user_error(invoke("fit", "--store", stores.small, "--out", tmp_path / "run", *TINY_FIT, "--seed", seed))
        assert_user_error(invoke("plan", "--store", stores.small, "--seed", seed), "--seed")
    assert_user_error(invoke("plan", "--store", stores.small, "--world-size", "1000"), "1000 ranks")


def test_a_store_with_nothing_to_score_is_refused(tmp_path: Path) -> None:
    normalize = TextOptions(strip_punctuation=True).normalize
    with pytest.raises(TrainerError, match="nothing can be scored"):
        check_scorable(tmp_path / "eval.zarr", [normalize("?! ..."), normalize("¿?")])
    check_scorable(tmp_path / "eval.zarr", [normalize("?!"), normalize("a b")])


def test_leftovers_and_odd_files_do_not_pass_for_ours(stores, run_dir: Path, tmp_path: Path) -> None:
    """Only NAME.<8 hex>.partial of a name a run writes is an atomic write's leftover; pipes and links are not ours."""
    cases = {
        "photos.0123abcd.partial/holiday.jpg": "photos.0123abcd.partial",
        "checkpoints/step-000001.deadbeef.partial/thesis.docx": "thesis.docx",
    }
    for number, (user_file, named) in enumerate(cases.items()):
        run = copy_run(run_dir, tmp_path / f"run{number}")
        (run / user_file).parent.mkdir(parents=True, exist_ok=True)
        (run / user_file).write_text("mine")
        assert_user_error(invoke("fit", "--store", stores.small, "--out", run, *TINY_FIT, "--overwrite"), named)
        assert (run / user_file).read_text() == "mine"
    run = copy_run(run_dir, tmp_path / "fifo")
    os.mkfifo(run / "processor" / "pipe")
    assert_user_error(invoke("fit", "--store", stores.small, "--out", run, *TINY_FIT, "--overwrite"), "pipe")
    link = tmp_path / "link"
    link.symlink_to(copy_run(run_dir, tmp_path / "target"))
    assert_user_error(invoke("fit", "--store", stores.small, "--out", link, *TINY_FIT, "--overwrite"), "symbolic link")


def test_damaged_runs_and_impossible_settings_are_one_line(stores, run_dir: Path, tmp_path: Path) -> None:
    damaged = copy_run(run_dir, tmp_path / "damaged")
    (damaged / "run.json").write_bytes(b"\xff\xfe{}")
    assert_user_error(invoke("fit", "--out", damaged, "--resume"), "not valid JSON")
    meta = json.loads(RunDir(run_dir).run_file.read_text())
    for field, value in (("seed", "x"), ("device", "tpu"), ("max_steps", "9")):
        (damaged / "run.json").write_text(json.dumps({**meta, "config": {**meta["config"], field: value}}))
        assert_user_error(invoke("fit", "--out", damaged, "--resume"), f"wrong type in config.{field}")
    odd = copy_run(run_dir, tmp_path / "odd")
    (odd / "checkpoints" / "step-abc").mkdir()
    (odd / "checkpoints" / "step-abc" / "state.pt").write_bytes(b"")
    assert RunDir(odd).checkpoint_steps() == RunDir(run_dir).checkpoint_steps()
    huge = ("--grad-accum", str(10**21))
    assert_user_error(invoke("fit", "--store", stores.small, "--out", tmp_path / "r", *TINY_FIT, *huge), "--grad-accum")
    if not torch.cuda.is_available():
        result = invoke("fit", "--store", stores.small, "--out", tmp_path / "r", *TINY_FIT, "--device", "cuda")
        assert_user_error(result, "no CUDA GPU")
        assert not (tmp_path / "r").exists()


def test_export_into_the_current_directory(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert invoke("export", "--run", run_dir, "--out", ".").exit_code == 0
    assert (here / "trainer-export.json").is_file() and (here / "config.json").is_file()
