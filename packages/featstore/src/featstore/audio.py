"""Audio decoding, resampling, normalization and quantization.

Clips arrive as bytes (webm/opus, ogg, flac, wav, mp3). PyAV decodes them with its bundled
FFmpeg libraries, so no ffmpeg program and no temporary file are needed; soxr resamples.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np
import soxr

SAMPLE_RATE = 16_000
# Wav2Vec2FeatureExtractor(do_normalize=True) divides by sqrt(var + 1e-7).
NORM_EPSILON = 1e-7
# Quantization step in units of the normalized signal's standard deviation. Quantization
# noise is step**2 / 12, so this step gives an SNR of 10*log10(12 / step**2) ~= 62.8 dB, 2.8 dB
# above the 60 dB target. Each halving of the step adds 6 dB and ~7 MB per stored audio hour:
# on speech-like audio 2e-3 stored 68.0 MB/h, this 65.8, and 3.2e-3 (60.7 dB, the coarsest step
# that kept every clip at 60 dB) 63.0 (bench/codecs.py, docs/CODECS.md).
QUANT_STEP = 2.5e-3
INT16_MAX = 32767
# Float audio (wav, flac, ...) is passed through as stored. Full scale is 1.0; a sample beyond
# 1000 (60 dB over full scale) is not a loud recording but a broken one, and its square would
# take the level and normalization towards overflow.
MAX_ABS_SAMPLE = 1000.0


class DecodeError(Exception):
    """The bytes are not audio that PyAV can decode."""

    reason = "undecodable"


class NonFiniteAudio(DecodeError):
    """The decoded samples hold NaN or infinity (float formats pass them through)."""

    reason = "non_finite_audio"


class OutOfRangeAudio(DecodeError):
    """The decoded samples are finite but far beyond full scale."""

    reason = "out_of_range_audio"


class TooLongAudio(DecodeError):
    """Decoding passed the caller's limit and stopped there."""

    reason = "too_long"


@dataclass(frozen=True)
class QuantizedClip:
    """A normalized utterance as int16 samples; float value = samples * scale."""

    samples: np.ndarray
    scale: float


def decode_clip(data: bytes, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Decode audio bytes to mono float32 at `sample_rate` (soxr high quality).

    With `max_seconds`, decoding stops (TooLongAudio) a second past it: a few MB of low-bitrate
    opus can hold hours of audio, many GB once decoded.
    """
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise DecodeError("no audio stream")
            stream = container.streams.audio[0]
            source_rate = stream.codec_context.sample_rate
            # Gathering the decoded frames in FFmpeg's FIFO and converting once is ~3x faster
            # than converting each 20 ms opus frame in Python.
            fifo = av.AudioFifo()
            limit = None if max_seconds is None else (max_seconds + 1) * source_rate
            for frame in container.decode(stream):
                frame.pts = None
                fifo.write(frame)
                if limit is not None and fifo.samples > limit:
                    stopped = fifo.samples / source_rate
                    raise TooLongAudio(f"over {max_seconds:g} s (decoding stopped at {stopped:.1f} s)")
            decoded = fifo.read()
    except DecodeError:
        raise
    except (av.error.FFmpegError, ValueError, EOFError) as error:
        raise DecodeError(str(error).splitlines()[0] if str(error) else type(error).__name__) from None
    if decoded is None or not decoded.samples or not source_rate:
        raise DecodeError("no audio frames")
    mono = _check_samples(_to_mono(decoded))
    if source_rate == sample_rate:
        return mono
    return soxr.resample(mono, source_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)


def _check_samples(samples: np.ndarray) -> np.ndarray:
    """Refuse samples that normalization would turn into zeros and the index into NaN levels.

    Checked before resampling, which would spread one bad sample over its neighbours.
    """
    peak = max(float(samples.max()), -float(samples.min()))  # NaN if any sample is NaN
    if not np.isfinite(peak):
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise NonFiniteAudio(f"{bad} of {samples.size} samples are NaN or infinite")
    if peak > MAX_ABS_SAMPLE:
        raise OutOfRangeAudio(f"peak {peak:.3g} is beyond +-{MAX_ABS_SAMPLE:g} (full scale is 1)")
    return samples


def _to_mono(frame: av.AudioFrame) -> np.ndarray:
    """A decoded frame as mono float32 in [-1, 1], averaging channels (planar or packed)."""
    pcm = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        pcm = pcm.reshape(-1, channels).T
    if np.issubdtype(pcm.dtype, np.integer):
        pcm = pcm.astype(np.float32) / float(np.iinfo(pcm.dtype).max)  # type: ignore[type-var]
    if channels == 1:  # mono, as speech corpora are: a view, not a mean over one channel (0.5-1% of decoding)
        return pcm[0].astype(np.float32, copy=False)
    return pcm.astype(np.float32, copy=False).mean(axis=0)


@dataclass(frozen=True)
class SourceLevels:
    """What normalization erases, measured on the decoded audio: loudness and clipping."""

    level_db: float  # RMS in dB relative to full scale
    clipping: float  # fraction of samples at full scale (|x| >= 0.999)


def measure_levels(samples: np.ndarray) -> SourceLevels:
    """RMS level and clipping rate, in few passes: a dot product, then a full-scale count only when needed."""
    if not samples.size:
        return SourceLevels(level_db=-200.0, clipping=0.0)
    rms = float(np.sqrt(np.dot(samples, samples) / samples.size))
    peak = max(float(samples.max()), -float(samples.min()))
    clipping = np.count_nonzero(np.abs(samples) >= 0.999) / samples.size if peak >= 0.999 else 0.0
    return SourceLevels(level_db=round(20 * np.log10(max(rms, 1e-10)), 2), clipping=round(float(clipping), 6))


def normalize(samples: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance: exactly what Wav2Vec2FeatureExtractor(do_normalize=True) does."""
    samples = np.asarray(samples, dtype=np.float32)
    return (samples - samples.mean()) / np.sqrt(samples.var() + NORM_EPSILON)


def quantize(normalized: np.ndarray) -> QuantizedClip:
    """int16 with a per-utterance scale: a step of QUANT_STEP standard deviations, unless the peak needs more.

    The step follows the clip's own deviation, not the nominal 1.0: normalization divides by
    sqrt(var + 1e-7), so a near-silent clip (-84 dBFS) comes out with a deviation of ~0.2, and a
    fixed step would leave it at ~50 dB SNR instead of ~65.
    """
    if not normalized.size:
        return QuantizedClip(samples=np.zeros(0, dtype=np.int16), scale=QUANT_STEP)
    peak = max(float(normalized.max()), -float(normalized.min()))  # no |x| temporary
    deviation = float(np.sqrt(np.dot(normalized, normalized) / normalized.size))  # the mean is 0: BLAS, one pass
    scale = max(QUANT_STEP * deviation, peak / INT16_MAX) or QUANT_STEP  # an all-zero clip keeps the nominal step
    samples = np.round(normalized / np.float32(scale)).astype(np.int16)
    return QuantizedClip(samples=samples, scale=scale)


def dequantize(samples: np.ndarray, scale: float) -> np.ndarray:
    """The stored int16 samples back as normalized float32."""
    return samples.astype(np.float32) * np.float32(scale)


def snr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Signal-to-noise ratio of `approximation` against `reference`, in dB."""
    noise = np.sum((reference.astype(np.float64) - approximation) ** 2)
    signal = np.sum(reference.astype(np.float64) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(signal / noise))
