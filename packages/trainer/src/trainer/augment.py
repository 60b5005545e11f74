"""On-the-fly augmentation in the DataLoader workers: speed perturbation, additive noise, gain.

Nothing is written back to the store: a worker reads an utterance's int16 samples, changes
them, and quantizes the result back to int16 with a new scale, so batches stay compact.

Every random choice is a function of (seed, epoch, utterance index) alone, never of the
order in which workers happen to read, so an epoch is the same however many workers run it,
and a resumed run sees exactly the audio that an uninterrupted one would have seen.

Speed perturbation changes an utterance's duration, so its factor is decided before
batching: `speed_factors` draws one factor per utterance of the store from (seed, epoch),
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
from featstore.sampler import DurationBucketSampler

INT16_MAX = 32767
# Independent random streams per (seed, epoch): one for the speed factors of the whole store,
# one per utterance for everything else.
_SPEED_STREAM = 0
_CLIP_STREAM = 1


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


def speed_factors(speeds: tuple[float, ...], seed: int, epoch: int, count: int) -> np.ndarray:
    """The speed factor of each of `count` utterances in `epoch`: one vectorised draw per epoch."""
    if not speeds:
        return np.ones(count)
    rng = np.random.default_rng([seed, epoch, _SPEED_STREAM])
    return np.asarray(speeds, dtype=np.float64)[rng.integers(len(speeds), size=count)]


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


def noise_segment(noise: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """`length` samples of `noise` from a random offset, looping a clip that is too short."""
    start = int(rng.integers(noise.size))
    repeats = math.ceil((start + length) / noise.size)
    return np.tile(noise, repeats)[start : start + length] if repeats > 1 else noise[start : start + length]


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`audio` plus `noise` scaled so that mean power(audio) / mean power(scaled noise) is `snr_db`.

    Silent audio or silent noise is returned unchanged: no SNR is defined.
    """
    signal_power = float(np.mean(np.square(audio, dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    if signal_power == 0.0 or noise_power == 0.0:
        return audio
    gain = math.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
    return (audio + np.float32(gain) * noise).astype(np.float32, copy=False)


def quantize(audio: np.ndarray) -> tuple[np.ndarray, float]:
    """int16 samples and a scale with `samples * scale ~= audio`, the peak at full scale."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak == 0.0:
        return np.zeros(audio.size, dtype=np.int16), 1.0
    scale = peak / INT16_MAX
    return np.rint(audio / np.float32(scale)).astype(np.int16), scale


@dataclass(frozen=True)
class ClipChoices:
    """The random choices for one utterance in one epoch."""

    speed: float
    gain_db: float
    noisy: bool
    snr_db: float
    noise_index: int
    noise_rng: np.random.Generator  # picks the offset into the noise clip


class Augmenter:
    """Changes an utterance's stored samples as `options` say, reproducibly per (seed, epoch, index).

    Built once in the main process and pickled into each DataLoader worker, which opens the
    noise store itself (like `StoreDataset`), so no reader or cache is shared between processes.
    """

    def __init__(self, options: AugmentOptions, seed: int, count: int, sample_rate: int) -> None:
        self.options = options
        self.seed = seed
        self.count = count  # utterances in the training store (speed factors are drawn for all)
        self.sample_rate = sample_rate
        self._factors: tuple[int, np.ndarray] = (-1, np.ones(0))
        self._noise: FeatStore | None = None
        self._pid = os.getpid()
        if options.noise_store is not None and len(self.noise) == 0:
            raise ValueError(f"{options.noise_store}: the noise store has no clips")

    def speed_factors(self, epoch: int) -> np.ndarray:
        """Every utterance's speed factor in `epoch` (kept for the epoch being read)."""
        if self._factors[0] != epoch:
            self._factors = (epoch, speed_factors(self.options.speeds, self.seed, epoch, self.count))
        return self._factors[1]

    def choices(self, index: int, epoch: int) -> ClipChoices:
        """Always the same draws in the same order, whichever of them are used."""
        rng = np.random.default_rng([self.seed, epoch, index, _CLIP_STREAM])
        gain_db = float(rng.uniform(*self.options.gain_db))
        noisy = bool(rng.random() < self.options.noise_prob) and self.options.noise_store is not None
        snr_db = float(rng.uniform(*self.options.snr_db))
        noise_index = int(rng.integers(len(self.noise))) if self.options.noise_store is not None else -1
        return ClipChoices(float(self.speed_factors(epoch)[index]), gain_db, noisy, snr_db, noise_index, rng)

    def __call__(self, index: int, samples: np.ndarray, scale: float, epoch: int) -> tuple[np.ndarray, float]:
        """The augmented (int16 samples, scale) of utterance `index` in `epoch`.

        Gain only multiplies the scale; speed and noise work on float audio, quantized back.
        """
        choice = self.choices(index, epoch)
        gain = 10 ** (choice.gain_db / 20)
        if choice.speed == 1.0 and not choice.noisy:
            return samples, scale * gain
        audio = change_speed(np.multiply(samples, scale, dtype=np.float32), choice.speed, self.sample_rate)
        if choice.noisy:
            noise = self.noise.audio(choice.noise_index)
            audio = add_noise(audio, noise_segment(noise, audio.size, choice.noise_rng), choice.snr_db)
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
        return {**self.__dict__, "_noise": None}


class SpeedAwareSampler(DurationBucketSampler):
    """featstore's length-grouped sampler, cutting each epoch's batches by that epoch's durations.

    `epoch_durations(epoch)` gives each utterance's speed-changed duration: batches are then as
    full as `max_batch_seconds` allows and never over it, where bounding every utterance by the
    slowest factor would leave them ~10% short at 0.9.
    """

    def __init__(self, durations: np.ndarray, *, epoch_durations: Callable[[int], np.ndarray], **options: Any) -> None:
        super().__init__(durations, **options)
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
