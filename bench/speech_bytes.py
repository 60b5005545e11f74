"""Store bytes per audio hour on speech-like audio, not just the tone language.

No real speech can be downloaded here, so espeak-ng (Debian's `espeak-ng` package) speaks
sentences in several languages and voices, with a recording-like noise floor (white noise at
-50 dB below the speech RMS). Each utterance is encoded to webm/opus at 32 and 64 kbit/s (the
range of browser recordings), then run through featstore's own path: `decode_clip`, `normalize`,
`quantize`, written with the store's chunk codec in 2**18-sample chunks. Prints MB per audio hour
and the SNR, against the 77 MB/h limit of issue 2 (a third of float32 Arrow's 230 MB/h).

    apt-get install espeak-ng
    python bench/speech_bytes.py --minutes 10
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import wave

import numpy as np
import soxr

from featstore.audio import decode_clip, dequantize, normalize, quantize, snr_db
from featstore.chunks import CHUNK_SAMPLES, chunk_codec
from featstore.sample import ENCODE_RATE, encode_webm_opus

VOICES = ("en", "en-us+f3", "sw", "fr", "de+m3", "es+f2", "pt", "it+f4")
WORDS = [
    "amakuru",
    "imvura",
    "inzu",
    "umwana",
    "ishuri",
    "abantu",
    "igihugu",
    "amazi",
    "ubuhinzi",
    "ikawa",
    "akazi",
    "inka",
    "umuhanda",
    "isoko",
    "indirimbo",
    "inshuti",
    "urugo",
    "icyayi",
    "ibiryo",
    "umujyi",
]


def speak(text: str, voice: str, speed: int) -> tuple[np.ndarray, int]:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=True
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    return samples, rate


def speech_clip(rng: np.random.Generator, bitrate: int) -> np.ndarray:
    """One random espeak-ng utterance with a -50 dB noise floor, as ingest decodes it from webm/opus."""
    text = " ".join(rng.choice(WORDS, int(rng.integers(4, 16))))
    audio, rate = speak(text, VOICES[int(rng.integers(len(VOICES)))], int(rng.integers(130, 190)))
    rms = float(np.sqrt(np.mean(audio**2))) or 1e-3
    audio = audio + rng.normal(0, rms * 10 ** (-50 / 20), audio.size).astype(np.float32)
    return decode_clip(encode_webm_opus(soxr.resample(audio, rate, ENCODE_RATE), bitrate=bitrate))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results = {}
    for bitrate in (32_000, 64_000):
        stored, seconds, snrs, pending = 0, 0.0, [], []
        codec = chunk_codec()
        while seconds < args.minutes * 60:
            decoded = speech_clip(rng, bitrate)
            reference = normalize(decoded)
            clip = quantize(reference)
            snrs.append(snr_db(reference, dequantize(clip.samples, clip.scale)))
            seconds += decoded.size / 16_000
            pending.append(clip.samples)
            joined = np.concatenate(pending)
            while joined.size >= CHUNK_SAMPLES:
                stored += len(codec.encode(joined[:CHUNK_SAMPLES]))
                joined = joined[CHUNK_SAMPLES:]
            pending = [joined]
        rest = np.concatenate(pending)
        stored += len(codec.encode(np.pad(rest, (0, CHUNK_SAMPLES - rest.size))))
        results[f"{bitrate // 1000} kbit/s"] = {
            "audio_minutes": round(seconds / 60, 1),
            "mb_per_audio_hour": round(stored / 1e6 / (seconds / 3600), 1),
            "snr_db_min": round(min(snrs), 1),
            "snr_db_median": round(float(np.median(snrs)), 1),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
