"""Decoding from bytes, resampling, normalization against transformers, quantization precision."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from transformers import Wav2Vec2FeatureExtractor

from featstore.audio import SAMPLE_RATE, DecodeError, decode_clip, dequantize, normalize, quantize, snr_db
from featstore.sample import ToneVoice, encode_webm_opus, synthesize


def encode(audio: np.ndarray, rate: int, fmt: str, codec: str, layout: str = "mono") -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = layout
        channels = 2 if layout == "stereo" else 1
        sample_format = stream.codec_context.codec.audio_formats[0].name
        planar = np.tile(audio, (channels, 1)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(
            planar.reshape(1, -1) if channels == 2 else planar, format="flt", layout=layout
        )
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=sample_format, layout=layout, rate=rate)
        for converted in resampler.resample(frame):
            for packet in stream.encode(converted):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def tone(seconds: float, rate: int, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("fmt", "codec", "rate"),
    [
        ("webm", "libopus", 48_000),
        ("ogg", "libopus", 48_000),
        ("flac", "flac", 44_100),
        ("wav", "pcm_s16le", 22_050),
        ("mp3", "libmp3lame", 44_100),
    ],
)
def test_decodes_each_container_from_bytes_to_16k_mono(fmt: str, codec: str, rate: int) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder to make test input")
    data = encode(tone(1.0, rate), rate, fmt, codec)
    audio = decode_clip(data)
    assert audio.dtype == np.float32
    assert abs(audio.size / SAMPLE_RATE - 1.0) < 0.08
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / audio.size - 440) < 5


def test_stereo_is_downmixed_to_mono() -> None:
    data = encode(tone(0.5, 44_100), 44_100, "wav", "pcm_s16le", layout="stereo")
    audio = decode_clip(data)
    assert audio.ndim == 1
    assert abs(audio.size - 8000) < 100
    assert 0.25 < np.abs(audio).max() < 0.35


def test_garbage_bytes_raise_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_clip(b"\x1aE\xdf\xa3 not really a webm file" * 10)


def test_normalization_matches_wav2vec2_feature_extractor() -> None:
    rng = np.random.default_rng(0)
    audio = decode_clip(encode_webm_opus(synthesize("abc def", ToneVoice(), rng)))
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True)
    expected = extractor(audio, sampling_rate=16_000).input_values[0]
    np.testing.assert_allclose(normalize(audio), expected, rtol=0, atol=1e-6)


def test_quantization_keeps_snr_above_60_db() -> None:
    rng = np.random.default_rng(1)
    normalized = normalize(decode_clip(encode_webm_opus(synthesize("hello world", ToneVoice("helowrd"), rng))))
    clip = quantize(normalized)
    assert clip.samples.dtype == np.int16
    assert snr_db(normalized, dequantize(clip.samples, clip.scale)) >= 60


@pytest.mark.parametrize("level_dbfs", [-6, -30, -60, -84, -100])
def test_quantization_keeps_snr_above_60_db_at_every_level(level_dbfs: int) -> None:
    """Near-silence is normalized to a deviation well under 1 (the 1e-7 epsilon): it keeps its fidelity."""
    rng = np.random.default_rng(2)
    tones = synthesize("quiet words", ToneVoice("quietwrds"), rng)
    quiet = (tones / np.sqrt(np.mean(tones**2)) * 10 ** (level_dbfs / 20)).astype(np.float32)
    normalized = normalize(quiet)
    clip = quantize(normalized)
    assert snr_db(normalized, dequantize(clip.samples, clip.scale)) >= 60


def test_silence_quantizes_to_zeros() -> None:
    clip = quantize(normalize(np.zeros(1600, dtype=np.float32)))
    assert not clip.samples.any() and clip.scale > 0
    assert quantize(np.zeros(0, dtype=np.float32)).samples.size == 0


def test_quantization_coarsens_for_extreme_peaks_instead_of_overflowing() -> None:
    spiky = np.zeros(16_000, dtype=np.float32)
    spiky[100] = 120.0
    clip = quantize(spiky)
    assert clip.samples.max() == 32767
    assert dequantize(clip.samples, clip.scale)[100] == pytest.approx(120.0, rel=1e-4)
