"""Data cleaning: `trainer score` ranks utterances worst first; fit leaves out what is excluded."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jiwer
import numpy as np
import pytest

from featstore import open_store
from featstore.ingest import ingest
from featstore.sample import write_sample_corpus
from trainer.config import BatchOptions, TextOptions
from trainer.data import StoreDataset, make_loader, training_sampler
from trainer.exclude import resolve_exclusion
from trainer.fit import fit
from trainer.run import read_run
from trainer.score import score_store
from trainer.vocab import build_processor, build_vocab

from helpers import assert_user_error, invoke, tiny_lora_config

ALPHABET = "abcdefghij"  # the letters of the session's stores (conftest.py)
BASE = Path(__file__).parents[2] / "models" / "tone-a"  # tiny-random trained on this language (scripts/make_base)


def read_scores(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def scored(stores, tmp_path_factory) -> Path:
    """A few LoRA steps on the small store, then its score table."""
    root = tmp_path_factory.mktemp("clean")
    fit(tiny_lora_config(stores.small, max_steps=3), root / "run")
    result = invoke("score", "--store", stores.small, "--run", root / "run", "--out", root / "scores.csv")
    assert result.exit_code == 0, result.output
    return root / "scores.csv"


def test_score_writes_every_utterance_worst_first(stores, scored: Path) -> None:
    store = open_store(stores.small)
    rows = read_scores(scored)
    assert [int(r["index"]) for r in sorted(rows, key=lambda r: int(r["index"]))] == list(range(len(store)))
    losses = [float(r["loss_per_char"]) for r in rows]
    assert losses == sorted(losses, reverse=True) and all(loss > 0 for loss in losses)
    for row in rows:
        i = int(row["index"])
        assert row["audio_filepath"] == store.record(i)["audio_filepath"]
        assert row["reference"] == TextOptions().normalize(store.texts[i])
        assert float(row["cer"]) == pytest.approx(jiwer.cer(row["reference"], row["hypothesis"]), abs=1e-5)
        assert float(row["duration"]) == pytest.approx(store.durations[i], rel=1e-5)
        assert float(row["level_db"]) == pytest.approx(store.levels_db[i], abs=1e-3)
        chars = len(row["reference"].replace(" ", ""))
        assert float(row["chars_per_second"]) == pytest.approx(chars / store.durations[i], rel=1e-4)


def _epoch_indices(store_path: Path, indices: np.ndarray, epoch: int) -> list[int]:
    store = open_store(store_path)
    processor = build_processor(build_vocab(store.texts), store_path.parent / f"processor-{store_path.name}")
    dataset = StoreDataset(store_path, processor, TextOptions(), indices)
    sampler = training_sampler(store, BatchOptions(batch_size=3), indices, None, seed=1)
    sampler.set_epoch(epoch)
    return [i for batch in make_loader(dataset, sampler, workers=1) for i in batch.indices.tolist()]


def test_exclusion_removes_exactly_the_listed_utterances(stores, tmp_path: Path) -> None:
    store = open_store(stores.train)
    names = [store.record(i)["audio_filepath"] for i in (5, 77)]
    listing = tmp_path / "bad.txt"
    listing.write_text(f"# found by ear\n3\n{names[0]}\n\n{names[1]}  # truncated read\n3\n", encoding="utf-8")
    exclusion = resolve_exclusion(stores.train, listing, None, None)
    assert exclusion.indices == (3, 5, 77)
    kept = exclusion.kept(len(store))
    for epoch in (0, 1):
        seen = _epoch_indices(stores.train, kept, epoch)
        assert sorted(seen) == sorted(set(range(len(store))) - {3, 5, 77})


def test_exclusion_by_cer_threshold_from_the_scores(stores, scored: Path) -> None:
    rows = read_scores(scored)
    threshold = float(np.median([float(r["cer"]) for r in rows]))
    exclusion = resolve_exclusion(stores.small, None, threshold, scored)
    assert set(exclusion.indices) == {int(r["index"]) for r in rows if float(r["cer"]) > threshold}
    assert str(scored) in exclusion.source


def test_fit_records_exclusion_and_augmentation_in_run_json(stores, tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_text("0\n1\n", encoding="utf-8")
    args = ["fit", "--store", stores.small, "--out", tmp_path / "run", "--base-model", "tiny-random"]
    args += ["--max-steps", 2, "--batch-size", 2, "--grad-accum", 1, "--device", "cpu", "--no-gradient-checkpointing"]
    args += ["--exclude", tmp_path / "bad.txt", "--augment-speeds", "0.9,1.1", "--augment-gain-db", -3, 3]
    args += ["--augment-noise-store", stores.dev, "--augment-snr-db", 5, 20, "--mask-time-prob", 0.05]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    config = read_run(tmp_path / "run")[1]["config"]
    assert config["exclusion"] == {"indices": [0, 1], "source": str(tmp_path / "bad.txt")}
    augment = config["augment"]
    assert augment["speeds"] == [0.9, 1.1] and augment["gain_db"] == [-3.0, 3.0] and augment["snr_db"] == [5.0, 20.0]
    assert augment["noise_store"] == str(stores.dev) and augment["mask_time_prob"] == 0.05
    base_config = json.loads((tmp_path / "run" / "base" / "config.json").read_text())
    assert base_config["mask_time_prob"] == 0.05  # the model masks in training, not in evaluation
    evaluate = invoke("evaluate", "--store", stores.small, "--run", tmp_path / "run", "--json")
    assert evaluate.exit_code == 0, evaluate.output


def test_bad_exclusions_and_augmentations_are_one_line_errors(stores, scored: Path, tmp_path: Path) -> None:
    fit_args = ["fit", "--store", stores.train, "--out", tmp_path / "run", "--base-model", "tiny-random"]
    (tmp_path / "bad.txt").write_text("no_such_clip.webm\n", encoding="utf-8")
    assert_user_error(invoke(*fit_args, "--exclude", tmp_path / "bad.txt"), "no_such_clip.webm")
    assert_user_error(invoke(*fit_args, "--exclude-cer-above", 0.5, "--scores", scored), "another store")
    assert_user_error(invoke(*fit_args, "--exclude-cer-above", 0.5), "--scores")
    for cer in ("nan", "-1"):  # a hand-edited table: such a row would never be above any threshold
        rows = read_scores(scored)
        rows[0]["cer"] = cer
        edited = tmp_path / f"edited-{cer}.csv"
        with edited.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        small_fit = ["fit", "--store", stores.small, "--out", tmp_path / "run", "--base-model", "tiny-random"]
        assert_user_error(invoke(*small_fit, "--exclude-cer-above", 0.5, "--scores", edited), "not a number >= 0")
    assert_user_error(invoke(*fit_args, "--augment-speeds", "0.9,fast"), "--augment-speeds")
    assert_user_error(invoke(*fit_args, "--augment-noise-store", tmp_path / "nothing"), "nothing")
    everything = tmp_path / "all.txt"
    everything.write_text("".join(f"{i}\n" for i in range(len(open_store(stores.small)))), encoding="utf-8")
    small_args = ["fit", "--store", stores.small, "--out", tmp_path / "run2", "--base-model", "tiny-random"]
    assert_user_error(invoke(*small_args, "--exclude", everything), "every utterance is excluded")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_score_ranks_planted_mislabels_above_clean_clips_once_the_model_has_learned(stores, tmp_path: Path) -> None:
    """A model that knows the tone language (our base, models/tone-a, after two LoRA steps on
    the clean training store) scores a store where 10% of the transcripts are wrong."""
    corpus = write_sample_corpus(
        tmp_path, shards=1, clips_per_shard=40, seed=9, defects=False, alphabet=ALPHABET, words=(1, 3), mislabels=0.1
    )
    suspects = tmp_path / "suspects.zarr"
    ingest(corpus.split_dir, suspects, workers=1, dashboard_address="127.0.0.1:0", show_progress=False, echo=print)
    config = tiny_lora_config(stores.train, base_model=str(BASE), learning_rate=1e-4, max_steps=2, eval_steps=2)
    fit(config, tmp_path / "run")
    score_store(tmp_path / "run", suspects, tmp_path / "scores.csv", "cpu")
    rows = read_scores(tmp_path / "scores.csv")
    planted = [rank for rank, row in enumerate(rows) if row["audio_filepath"] in corpus.mislabels]
    clean_cer = [float(row["cer"]) for row in rows if row["audio_filepath"] not in corpus.mislabels]
    print(f"\nplanted ranks {planted} of {len(rows)}; clean median CER {np.median(clean_cer):.3f}")
    assert len(planted) >= 3  # of the 4 planted, those ingest kept (it rejects clips under its minimum duration)
    assert np.median(clean_cer) <= 0.1  # the model knows the language
    assert planted == list(range(len(planted)))  # every planted clip ranks above every clean one
