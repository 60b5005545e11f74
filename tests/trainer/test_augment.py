"""Augmentation changes audio as specified and does it the same way every time."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from featstore import open_store
from featstore.chunks import bucket_of
from featstore.sampler import SORT_WINDOW, DurationBucketSampler
from trainer.augment import (
    Augmenter,
    AugmentOptions,
    SpeedAwareSampler,
    SpeedChangedDurations,
    add_noise,
    change_speed,
    epoch_draws,
    quantize,
    speed_length,
)
from trainer.config import BatchOptions
from trainer.evaluate import evaluate_run
from trainer.fit import fit
from trainer.metrics import read_metrics
from trainer.model import trainable_state
from trainer.run import RunDir

from helpers import tiny_lora_config

SR = 16_000


def _power_db(audio: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(audio, dtype=np.float64))))


def _dominant_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.fft.rfftfreq(audio.size, 1 / SR)[np.argmax(spectrum)])


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_scales_duration_and_pitch_by_the_factor(factor: float) -> None:
    tone = np.sin(2 * np.pi * 440 * np.arange(2 * SR) / SR).astype(np.float32)
    faster = change_speed(tone, factor, SR)
    assert faster.dtype == np.float32
    assert faster.size == speed_length(tone.size, factor)
    assert faster.size / tone.size == pytest.approx(1 / factor, abs=1e-4)
    assert _dominant_hz(faster) == pytest.approx(440 * factor, abs=2)
    assert _power_db(faster[SR // 10 : -SR // 10]) == pytest.approx(_power_db(tone), abs=0.1)


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_added_noise_has_the_asked_snr(snr_db: float) -> None:
    rng = np.random.default_rng(0)
    clean = rng.normal(0, 0.3, SR).astype(np.float32)
    noise = rng.uniform(-2, 2, SR).astype(np.float32)
    noisy = add_noise(clean, noise, snr_db)
    assert _power_db(clean) - _power_db(noisy - clean) == pytest.approx(snr_db, abs=0.01)


def test_silent_audio_gets_no_noise() -> None:
    silent = np.zeros(100, np.float32)
    assert np.array_equal(add_noise(silent, np.ones(100, np.float32), 10.0), silent)


def test_quantize_keeps_the_audio_to_int16_precision() -> None:
    audio = np.random.default_rng(1).normal(0, 1, 1000).astype(np.float32)
    samples, scale = quantize(audio.copy())
    assert samples.dtype == np.int16 and np.abs(samples).max() == 32767
    assert np.abs(samples * scale - audio).max() <= scale / 2 + 1e-6


def test_draws_are_made_per_seed_and_epoch() -> None:
    options = AugmentOptions(speeds=(0.9, 1.0, 1.1), gain_db=(-6.0, 6.0))
    first = epoch_draws(options, seed=0, epoch=0, count=300)
    assert np.array_equal(first.speed, epoch_draws(options, seed=0, epoch=0, count=300).speed)
    assert set(first.speed.tolist()) == {0.9, 1.0, 1.1}
    assert not np.array_equal(first.speed, epoch_draws(options, seed=0, epoch=1, count=300).speed)
    assert not np.array_equal(first.speed, epoch_draws(options, seed=1, epoch=0, count=300).speed)
    # Noise options do not move the speed factors, so batches stay the same when they change.
    noisy = AugmentOptions(speeds=(0.9, 1.0, 1.1), gain_db=(-6.0, 6.0), noise_store="n.zarr", snr_db=(0.0, 5.0))
    assert np.array_equal(first.speed, epoch_draws(noisy, seed=0, epoch=0, count=300).speed)
    assert not first.noisy.any() and epoch_draws(noisy, 0, 0, 300).noisy.all()
    assert np.array_equal(epoch_draws(AugmentOptions(), 0, 0, 5).speed, np.ones(5))


def _augmenter(store, **options) -> Augmenter:
    return Augmenter(AugmentOptions(**options), seed=7, count=len(store), sample_rate=store.sample_rate)


def test_gain_changes_the_level_by_the_drawn_decibels(stores) -> None:
    store = open_store(stores.small)
    augment = _augmenter(store, gain_db=(-6.0, 6.0))
    gains = []
    for i in range(len(store)):
        samples, scale = augment(i, store.raw_audio(i), float(store.scales[i]), epoch=0)
        assert np.array_equal(samples, store.raw_audio(i))
        gain = _power_db(samples * np.float32(scale)) - _power_db(store.audio(i))
        assert gain == pytest.approx(augment.draws(0).gain_db[i], abs=1e-3)
        gains.append(gain)
    assert -6 <= min(gains) < 0 < max(gains) <= 6


def test_noise_from_a_store_is_added_at_an_snr_in_the_range(stores) -> None:
    store = open_store(stores.small)
    augment = _augmenter(store, noise_store=str(stores.dev), snr_db=(5.0, 15.0))
    for i in range(len(store)):
        clean = store.audio(i)
        samples, scale = augment(i, store.raw_audio(i), float(store.scales[i]), epoch=3)
        noisy = samples * np.float32(scale)
        assert noisy.size == clean.size
        measured = _power_db(clean) - _power_db(noisy - clean)
        assert measured == pytest.approx(augment.draws(3).snr_db[i], abs=0.05)
        assert 5.0 - 0.05 <= measured <= 15.0 + 0.05


def test_speed_perturbation_of_store_audio_gives_the_drawn_duration(stores) -> None:
    store = open_store(stores.small)
    augment = _augmenter(store, speeds=(0.9, 1.0, 1.1))
    seen = set()
    for i in range(len(store)):
        factor = augment.draws(1).speed[i]
        samples, _ = augment(i, store.raw_audio(i), float(store.scales[i]), epoch=1)
        assert samples.size == speed_length(int(store.lengths[i]), factor)
        seen.add(factor)
    assert seen == {0.9, 1.0, 1.1}


def test_augmentation_is_deterministic_per_seed_epoch_and_utterance(stores) -> None:
    store = open_store(stores.small)
    options = {"speeds": (0.9, 1.1), "noise_store": str(stores.dev), "gain_db": (-3.0, 3.0)}
    augment = _augmenter(store, **options)
    in_a_worker = pickle.loads(pickle.dumps(augment))  # what a DataLoader worker gets
    for i in reversed(range(len(store))):  # another reading order than the first augmenter's
        expected = augment(i, store.raw_audio(i), float(store.scales[i]), epoch=2)
        got = in_a_worker(i, store.raw_audio(i), float(store.scales[i]), epoch=2)
        assert np.array_equal(expected[0], got[0]) and expected[1] == got[1]
    next_epoch = [augment(i, store.raw_audio(i), float(store.scales[i]), epoch=3) for i in range(len(store))]
    this_epoch = [augment(i, store.raw_audio(i), float(store.scales[i]), epoch=2) for i in range(len(store))]
    changed = [
        a[0].size != b[0].size or not np.array_equal(a[0], b[0]) for a, b in zip(next_epoch, this_epoch, strict=True)
    ]
    assert any(changed)


def test_speed_aware_batches_fit_their_limit_with_the_changed_durations(stores) -> None:
    store = open_store(stores.train)
    augment = _augmenter(store, speeds=(0.9, 1.0, 1.1))
    indices = np.arange(len(store))
    durations = SpeedChangedDurations(augment, store.lengths, indices)
    sampler = SpeedAwareSampler(
        store.durations, epoch_durations=durations, speeds=3, max_batch_seconds=10.0, buckets=store.buckets, seed=7
    )
    plain = DurationBucketSampler(store.durations, max_batch_seconds=10.0, buckets=store.buckets, seed=7)
    overfull = 0
    for epoch in range(3):
        sampler.set_epoch(epoch)
        plain.set_epoch(epoch)
        changed = durations(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == indices.tolist()
        for batch in batches:
            longest = max(speed_length(int(store.lengths[i]), augment.draws(epoch).speed[i]) for i in batch)
            assert longest * len(batch) <= 10.0 * SR
        # Cut by the stored durations instead, batches run over the limit once slowed down.
        overfull += sum(max(changed[b]) * len(b) > 10.0 for b in plain)
    assert overfull > 0


def test_speed_aware_windows_keep_each_factors_clips_together() -> None:
    """A stored bucket mixes the factors' clips: windows `speeds` times wider pad less than featstore's."""
    rng = np.random.default_rng(0)
    stored = rng.uniform(2.0, 15.0, 6000)
    changed = stored / rng.choice([0.9, 1.0, 1.1], stored.size)
    layout = {"max_batch_seconds": 100.0, "buckets": np.array([bucket_of(d) for d in stored]), "seed": 0}
    wide = SpeedAwareSampler(stored, epoch_durations=lambda epoch: changed, speeds=3, **layout)
    narrow = SpeedAwareSampler(stored, epoch_durations=lambda epoch: changed, speeds=1, **layout)
    assert wide.sort_window == 3 * narrow.sort_window
    assert sorted(i for b in wide for i in b) == list(range(stored.size))
    assert wide.plan().padding_fraction < 0.6 * narrow.plan().padding_fraction
    # A checkpoint carries the window; one saved before it did resumes with the window it used.
    resumed = SpeedAwareSampler(stored, epoch_durations=lambda epoch: changed, speeds=1, **layout)
    resumed.load_state_dict({**wide.state_dict(), "batches_trained": 3})
    assert resumed.sort_window == wide.sort_window and list(resumed) == wide.rank_batches()[3:]
    resumed.load_state_dict({"epoch": 0, "batches_trained": 3, "seed": 0})
    assert resumed.sort_window == SORT_WINDOW


def _stop_at(step: int):
    def on_step(current: int) -> None:
        if current == step:
            raise KeyboardInterrupt

    return on_step


def test_interrupted_fit_with_augmentation_resumes_exactly(stores, tmp_path) -> None:
    """Speed, noise, gain and SpecAugment masking, a prefetching worker, across epochs: all line up."""
    augment = AugmentOptions(
        speeds=(0.9, 1.0, 1.1), noise_store=str(stores.dev), gain_db=(-4.0, 4.0), mask_time_prob=0.1
    )
    batch = BatchOptions(max_batch_seconds=5.0, batch_size=None)
    config = tiny_lora_config(stores.small, augment=augment, batch=batch, workers=1, max_steps=9, eval_steps=3)
    straight = fit(config, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "resumed", on_step=_stop_at(5))
    resumed = fit(config, tmp_path / "resumed", resume=True)
    assert resumed.steps == straight.steps == 9
    epochs = [r["epoch"] for r in read_metrics(RunDir(tmp_path / "straight").metrics) if "loss" in r]
    assert epochs[0] == 0 and epochs[-1] >= 1  # the run crosses an epoch: its speed factors are redrawn
    expected, actual = trainable_state(straight.model), trainable_state(resumed.model)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow  # a short fit and four evaluations
def test_evaluation_never_augments(stores, tmp_path) -> None:
    """A run trained with every augmentation and heavy masking scores exactly as the same weights without them."""
    augment = AugmentOptions(
        speeds=(0.9, 1.1), noise_store=str(stores.dev), gain_db=(-6.0, 6.0), mask_time_prob=0.5, mask_feature_prob=0.5
    )
    augmented = tmp_path / "augmented"
    fit(tiny_lora_config(stores.small, augment=augment, max_steps=2, eval_steps=2), augmented)
    plain = tmp_path / "plain"
    shutil.copytree(augmented, plain)
    meta = json.loads((plain / "run.json").read_text())
    del meta["config"]["augment"]  # read as no augmentation
    (plain / "run.json").write_text(json.dumps(meta))
    assert evaluate_run(augmented, stores.small) == evaluate_run(plain, stores.small)
    assert evaluate_run(augmented, stores.small) == evaluate_run(augmented, stores.small)
