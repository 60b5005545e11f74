"""On-the-fly augmentation in the DataLoader workers: speed perturbation, additive noise, gain.

Nothing is written back to the store: a worker reads an utterance's int16 samples, changes
them, and quantizes the result back to int16 with a new scale, so batches stay compact.

Every random choice is a function of (seed, epoch, utterance index) alone, never of the
order in which workers happen to read, so an epoch is the same however many workers run it,
and a resumed run sees exactly the audio that an uninterrupted one would have seen.

Speed perturbation changes an utterance's duration, so its factor is decided before
batching: `epoch_draws` draws one factor per utterance of the store from (seed, epoch),
`SpeedAwareSampler` cuts that epoch's batches by the changed durations (so they fill
`max_batch_seconds` and never pass it), and the worker applies the same factor.

SpecAugment-style masking (`mask_time_prob`, `mask_feature_prob`) is not done here: it is
the model's own, set in its config (see `masking_config`), and active only in training mode,
so evaluation never masks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr

from featstore import FeatStore, open_store
from featstore.sampler import SORT_WINDOW, DurationBucketSampler

INT16_MAX = 32767
_DRAWS_STREAM = 0  # a generator key beside (seed, epoch), kept apart from any other use of them
# Noise is read as one bank per epoch: this many seconds of consecutive noise clips (in storage
# order, so a few chunk reads), from a position drawn per epoch. Utterances take segments of it:
# reading a random noise clip per utterance cost a chunk decode each, as much as the read itself.
NOISE_BANK_SECONDS = 300.0


@dataclass(frozen=True)
class AugmentOptions:
    """What `trainer fit` does to training audio; the defaults change nothing."""

    speeds: tuple[float, ...] = ()  # speed factors drawn uniformly per utterance, e.g. (0.9, 1.0, 1.1)
    noise_store: str | None = None  # a featstore store whose clips are the noise
    noise_prob: float = 1.0  # share of utterances that get noise (with a noise store)
    snr_db: tuple[float, float] = (10.0, 30.0)  # signal-to-noise ratio range, drawn uniformly
    gain_db: tuple[float, float] = (0.0, 0.0)  # gain range in dB, drawn uniformly
    mask_time_prob: float | None = None  # SpecAugment: share of time steps masked; None keeps the base's
    mask_feature_prob: float | None = None  # SpecAugment: share of feature channels masked; None: the base's

    @property
    def changes_speed(self) -> bool:
        return any(factor != 1.0 for factor in self.speeds)

    @property
    def changes_audio(self) -> bool:
        """Whether the workers have anything to do (masking happens in the model)."""
        return self.changes_speed or self.noise_store is not None or self.gain_db != (0.0, 0.0)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AugmentOptions:
        return cls(
            **{
                **data,
                "speeds": tuple(data["speeds"]),
                "snr_db": tuple(data["snr_db"]),
                "gain_db": tuple(data["gain_db"]),
            }
        )


@dataclass(frozen=True)
class EpochDraws:
    """Every random choice of one epoch, one entry per utterance of the store (by store index).

    Drawn at once per (seed, epoch) from one generator: a few vectorised draws cost less than
    seeding a generator per utterance, and every worker that needs them gets the same arrays.
    """

    speed: np.ndarray  # speed factor
    gain_db: np.ndarray
    noisy: np.ndarray  # bool: gets noise
    snr_db: np.ndarray
    noise_offset: np.ndarray  # in [0, 1): where its noise starts in the epoch's noise bank
    bank_start: float  # in [0, 1): where the epoch's noise bank starts in the noise store


def epoch_draws(options: AugmentOptions, seed: int, epoch: int, count: int) -> EpochDraws:
    """The draws of `epoch` for `count` utterances; speeds first, so other options leave them be."""
    rng = np.random.default_rng([seed, epoch, _DRAWS_STREAM])
    speeds = np.asarray(options.speeds or (1.0,), dtype=np.float64)
    return EpochDraws(
        speed=speeds[rng.integers(speeds.size, size=count)],
        gain_db=rng.uniform(*options.gain_db, size=count),
        noisy=(rng.random(count) < options.noise_prob) & (options.noise_store is not None),
        snr_db=rng.uniform(*options.snr_db, size=count),
        noise_offset=rng.random(count),
        bank_start=float(rng.random()),
    )


def speed_length(length: int, factor: float) -> int:
    """Samples of a `length`-sample utterance played `factor` times as fast."""
    return math.ceil(length / factor)


def change_speed(audio: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Play `audio` `factor` times as fast (tempo and pitch, like Kaldi's speed perturbation).

    The audio is taken to be recorded at `factor * sample_rate` and resampled to `sample_rate`
    with soxr; the result has exactly `speed_length(len(audio), factor)` samples.
    """
    if factor == 1.0:
        return audio
    out = soxr.resample(audio, factor * sample_rate, sample_rate, quality="HQ")
    length = speed_length(audio.size, factor)
    if out.size >= length:
        return np.ascontiguousarray(out[:length], dtype=np.float32)
    return np.pad(out, (0, length - out.size)).astype(np.float32, copy=False)


def noise_segment(noise: np.ndarray, length: int, offset: float) -> np.ndarray:
    """`length` samples of `noise` starting at `offset` (a fraction in [0, 1)), looped if too short."""
    if noise.size >= length:
        start = int(offset * (noise.size - length + 1))
        return noise[start : start + length]
    return np.resize(np.roll(noise, -int(offset * noise.size)), length)


def noise_bank(store: FeatStore, start: float, seconds: float) -> np.ndarray:
    """About `seconds` of `store`'s audio: its clips in storage order from fraction `start`, wrapping."""
    order = np.lexsort((store.offsets, store.buckets, store.shard_codes))
    order = np.roll(order, -int(start * order.size))
    pieces, samples = [], 0
    for index in order.tolist():
        pieces.append(store.audio(index))
        samples += pieces[-1].size
        if samples >= seconds * store.sample_rate:
            break
    return np.concatenate(pieces)


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`audio` plus `noise` scaled so that mean power(audio) / mean power(scaled noise) is `snr_db`.

    Silent audio or silent noise is returned unchanged: no SNR is defined.
    """
    signal_energy = float(np.dot(audio, audio))
    noise_energy = float(np.dot(noise, noise))
    if signal_energy == 0.0 or noise_energy == 0.0:
        return audio
    mixed = np.multiply(noise, math.sqrt(signal_energy / (noise_energy * 10 ** (snr_db / 10))), dtype=np.float32)
    mixed += audio
    return mixed


def quantize(audio: np.ndarray) -> tuple[np.ndarray, float]:
    """int16 samples and a scale with `samples * scale ~= audio`, the peak at full scale.

    Works in place on `audio` (a float32 array of the caller's own): one temporary less.
    """
    peak = max(float(audio.max()), -float(audio.min())) if audio.size else 0.0
    if peak == 0.0:
        return np.zeros(audio.size, dtype=np.int16), 1.0
    scale = peak / INT16_MAX
    np.multiply(audio, np.float32(1 / scale), out=audio)
    return np.rint(audio, out=audio).astype(np.int16), scale


class Augmenter:
    """Changes an utterance's stored samples as `options` say, reproducibly per (seed, epoch, index).

    Built once in the main process and pickled into each DataLoader worker, which opens the
    noise store itself (like `StoreDataset`), so no reader or cache is shared between processes.
    """

    def __init__(self, options: AugmentOptions, seed: int, count: int, sample_rate: int) -> None:
        self.options = options
        self.seed = seed
        self.count = count  # utterances in the training store (draws are made for all)
        self.sample_rate = sample_rate
        self._draws: tuple[int, EpochDraws | None] = (-1, None)
        self._bank: tuple[int, np.ndarray] = (-1, np.zeros(0, np.float32))
        self._noise: FeatStore | None = None
        self._pid = os.getpid()
        if options.noise_store is not None and len(self.noise) == 0:
            raise ValueError(f"{options.noise_store}: the noise store has no clips")

    def draws(self, epoch: int) -> EpochDraws:
        """The draws of `epoch` (kept for the epoch being read)."""
        cached_epoch, draws = self._draws
        if draws is None or cached_epoch != epoch:
            draws = epoch_draws(self.options, self.seed, epoch, self.count)
            self._draws = (epoch, draws)
        return draws

    def speed_factors(self, epoch: int) -> np.ndarray:
        """Every utterance's speed factor in `epoch`."""
        return self.draws(epoch).speed

    def noise_bank(self, epoch: int) -> np.ndarray:
        """The noise that utterances of `epoch` take their segments from (read once per epoch)."""
        if self._bank[0] != epoch:
            self._bank = (epoch, noise_bank(self.noise, self.draws(epoch).bank_start, NOISE_BANK_SECONDS))
        return self._bank[1]

    def __call__(self, index: int, samples: np.ndarray, scale: float, epoch: int) -> tuple[np.ndarray, float]:
        """The augmented (int16 samples, scale) of utterance `index` in `epoch`.

        Gain only multiplies the scale; speed and noise work on float audio, quantized back.
        """
        draws = self.draws(epoch)
        speed, noisy = float(draws.speed[index]), bool(draws.noisy[index])
        gain = 10 ** (float(draws.gain_db[index]) / 20)
        if speed == 1.0 and not noisy:
            return samples, scale * gain
        audio = change_speed(np.multiply(samples, scale, dtype=np.float32), speed, self.sample_rate)
        if noisy:
            noise = noise_segment(self.noise_bank(epoch), audio.size, float(draws.noise_offset[index]))
            audio = add_noise(audio, noise, float(draws.snr_db[index]))
        quantized, new_scale = quantize(audio)
        return quantized, new_scale * gain

    @property
    def noise(self) -> FeatStore:
        """This process's own reader of the noise store (reopened after a fork)."""
        if self.options.noise_store is None:
            raise ValueError("no noise store configured")
        if self._noise is None or self._pid != os.getpid():
            self._noise, self._pid = open_store(self.options.noise_store), os.getpid()
        return self._noise

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_noise": None, "_bank": (-1, np.zeros(0, np.float32))}


class SpeedAwareSampler(DurationBucketSampler):
    """featstore's length-grouped sampler, cutting each epoch's batches by that epoch's durations.

    `epoch_durations(epoch)` gives each utterance's speed-changed duration: batches are then as
    full as `max_batch_seconds` allows and never over it, where bounding every utterance by the
    slowest factor would leave them ~10% short at 0.9.

    A stored bucket holds each of the `speeds` factors' clips mixed, so the windows sorted by
    duration are `speeds` times wider than featstore's: on 60,000 clips of 2-15 s with factors
    0.9/1.0/1.1, padding 1.1% instead of 2.5% and 7% fewer batches, with as many chunk decodes
    (a 64 MB reader cache holds the wider window).
    """

    def __init__(
        self, durations: np.ndarray, *, epoch_durations: Callable[[int], np.ndarray], speeds: int, **options: Any
    ) -> None:
        super().__init__(durations, **{"sort_window": SORT_WINDOW * max(speeds, 1), **options})
        self.epoch_durations = epoch_durations

    def epoch_batches(self) -> list[list[int]]:
        self.durations = self.epoch_durations(self.epoch)
        return super().epoch_batches()


@dataclass(frozen=True)
class SpeedChangedDurations:
    """Seconds of each kept utterance after its speed change in an epoch (a picklable callable)."""

    augmenter: Augmenter
    lengths: np.ndarray  # stored samples of the utterances the sampler sees
    indices: np.ndarray  # their indices in the store

    def __call__(self, epoch: int) -> np.ndarray:
        factors = self.augmenter.speed_factors(epoch)[self.indices]
        return np.ceil(self.lengths / factors) / self.augmenter.sample_rate


def masking_config(options: AugmentOptions) -> dict[str, float]:
    """wav2vec2 config values for SpecAugment-style masking; unset ones keep the base model's."""
    values = {"mask_time_prob": options.mask_time_prob, "mask_feature_prob": options.mask_feature_prob}
    return {name: value for name, value in values.items() if value is not None}
