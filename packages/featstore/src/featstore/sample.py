"""Generate a small corpus in the real tarred layout, with real webm/opus audio.

The audio is a "tone language": every character is a short harmonic tone of its own pitch,
words are separated by silence. Two languages exist (`LANGUAGES`): "a" writes Latin letters,
lowest letter lowest pitch; "b" has its own alphabet (ten Greek letters) and its own sound-to-symbol
mapping (pitches between a's, in the opposite order, with a hollower timbre), so a model trained
on "a" has to adapt to transcribe "b": the setting of fine-tuning a pretrained model to a new
language. It is cheap to make, compresses like voiced audio, and a tiny
model can learn to transcribe it on a CPU in minutes, so the Quickstart and the tests can run
the whole pipeline, training included, without downloading anything.

A few clips carry the defects that real corpora have (see `DEFECTS`), so ingest's reject
handling is exercised too.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np

from featstore.mislabel import SIDECAR, MislabelPlanter

ENCODE_RATE = 48_000
KINYARWANDA_LETTERS = "abcdefghijkmnoprstuvwyz"
GREEK_LETTERS = "αβγδεζηθικ"  # language b's letters: as many as the tests' language a
MANIFEST_DIR = "sharded_manifests_with_image"
DEFECTS = (
    "undecodable",  # random bytes in place of a webm
    "truncated",  # webm cut in half: decodes without error, just shorter
    "missing_audio",  # a record whose clip is in no shard
    "no_record",  # a tar member that no manifest lists
    "empty_text",  # a record with empty text
    "null_text",  # a record with null text
    "too_short",  # a clip below the minimum duration
    "bad_json",  # a manifest line that is not JSON
    "outside_alphabet",  # text with a character outside the alphabet (kept)
)


@dataclass(frozen=True)
class ToneVoice:
    """How characters sound: each character a tone at its own pitch, `step_semitones` apart.

    `descending`: the first letter gets the highest pitch. `harmonics`: the amplitude of
    harmonics 1, 2, 3, ... (the timbre).
    """

    alphabet: str = KINYARWANDA_LETTERS
    lowest_hz: float = 220.0
    step_semitones: float = 1.5
    descending: bool = False
    harmonics: tuple[float, ...] = (1.0, 1 / 2, 1 / 3)

    def pitch(self, char: str) -> float:
        index = self.alphabet.index(char) if char in self.alphabet else len(self.alphabet)
        if self.descending:
            index = len(self.alphabet) - 1 - index
        return self.lowest_hz * 2 ** (index * self.step_semitones / 12)

    def with_alphabet(self, alphabet: str) -> ToneVoice:
        return replace(self, alphabet=alphabet)


LANGUAGES = {
    "a": ToneVoice(),
    # Half a step above a's pitches, in reverse order, odd harmonics only (a clarinet to a's string).
    "b": ToneVoice(GREEK_LETTERS, lowest_hz=220.0 * 2 ** (0.75 / 12), descending=True, harmonics=(1.0, 0, 1 / 3)),
}


def synthesize(text: str, voice: ToneVoice, rng: np.random.Generator, rate: int = ENCODE_RATE) -> np.ndarray:
    """Render `text` as float32 audio: tones of 60-100 ms per character, 150-250 ms between words."""
    speaker_shift = rng.uniform(0.98, 1.02)
    pieces = [_silence(rng.uniform(0.05, 0.15), rate)]
    for w, word in enumerate(text.split()):
        if w:
            pieces.append(_silence(rng.uniform(0.15, 0.25), rate))
        for char in word:
            pieces.append(_tone(voice.pitch(char) * speaker_shift, rng.uniform(0.06, 0.10), voice.harmonics, rate))
            pieces.append(_silence(rng.uniform(0.01, 0.02), rate))
    pieces.append(_silence(rng.uniform(0.05, 0.15), rate))
    audio = np.concatenate(pieces) * rng.uniform(0.1, 0.5)
    audio += rng.normal(0, 10 ** (-50 / 20) * 0.3, audio.size)
    return audio.astype(np.float32)


def _tone(pitch_hz: float, seconds: float, harmonics: tuple[float, ...], rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(a * np.sin(2 * np.pi * pitch_hz * h * t) for h, a in enumerate(harmonics, start=1) if a)
    return wave * np.hanning(t.size)


def _silence(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(int(seconds * rate))


def encode_webm_opus(audio: np.ndarray, rate: int = ENCODE_RATE, bitrate: int = 32_000) -> bytes:
    """Encode mono float32 audio as a webm file with an opus stream, like the real corpus."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="webm") as container:
        stream = container.add_stream("libopus", rate=rate)
        stream.layout = "mono"
        stream.bit_rate = bitrate
        frame = av.AudioFrame.from_ndarray(audio[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def random_text(rng: np.random.Generator, alphabet: str, words: tuple[int, int] = (2, 5)) -> str:
    count = int(rng.integers(words[0], words[1] + 1))
    return " ".join("".join(rng.choice(list(alphabet), size=int(rng.integers(2, 7)))) for _ in range(count))


@dataclass(frozen=True)
class SampleCorpus:
    split_dir: Path
    shards: int
    clips: int
    defects: dict[str, str]  # defect -> audio_filepath (or manifest line) that carries it
    mislabels: dict[str, str]  # audio_filepath -> how its transcript is wrong (see featstore.mislabel)


def write_sample_corpus(
    out: Path,
    shards: int = 2,
    clips_per_shard: int = 12,
    seed: int = 0,
    defects: bool = True,
    alphabet: str | None = None,
    split: str = "train",
    words: tuple[int, int] = (2, 5),
    language: str = "a",
    mislabels: float = 0.0,
) -> SampleCorpus:
    """Write `out/<split>_tarred/` in the real layout: manifests plus audio_N.tar.xz shards.

    `language` picks how characters sound (`LANGUAGES`); `alphabet` (default: the language's
    letters) which characters the text uses, in pitch order. With `defects`, shard 0 carries one
    clip of each kind in `DEFECTS` (it needs at least `len(DEFECTS)` clips per shard).
    `mislabels` is the share of the other clips given a wrong transcript. `planted.json` beside
    the manifests lists both.
    """
    rng = np.random.default_rng(seed)
    voice = LANGUAGES[language]
    voice = voice.with_alphabet(alphabet) if alphabet is not None else voice
    alphabet = voice.alphabet
    split_dir = Path(out) / f"{split}_tarred"
    manifest_dir = split_dir / MANIFEST_DIR
    audio_dir = manifest_dir / "audio_shards"
    audio_dir.mkdir(parents=True, exist_ok=True)
    planted: dict[str, str] = {}
    planter = MislabelPlanter(shards * clips_per_shard, mislabels, seed, first=len(DEFECTS) if defects else 1)
    for shard in range(shards):
        plant = list(DEFECTS) if defects and shard == 0 else []
        lines, members = [], []
        for clip in range(clips_per_shard):
            name = f"{split}_{shard:03d}_{clip:05d}.webm"
            text = random_text(rng, alphabet, words)
            record = _record(name, text, shard, clip, rng)
            data = encode_webm_opus(synthesize(text, voice, rng))
            record["duration"] = round(_duration(text, data), 3)
            record = planter.relabel(shard * clips_per_shard + clip, record)
            defect = plant.pop(0) if plant else None
            data, record, include_member, include_record = _apply_defect(defect, data, record, rng)
            if defect:
                planted[defect] = name
            if include_record:
                lines.append(json.dumps(record, ensure_ascii=False))
            if include_member:
                members.append((name, data))
            if defect == "bad_json":
                lines.append('{"audio_filepath": "broken.webm", "text": ')
        (manifest_dir / f"manifest_{shard}.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
        _write_tar_xz(audio_dir / f"audio_{shard}.tar.xz", members)
    sidecar = {"defects": planted, "mislabels": planter.planted}
    (split_dir / SIDECAR).write_text(json.dumps(sidecar, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return SampleCorpus(split_dir, shards, shards * clips_per_shard, planted, planter.planted)


def _duration(text: str, data: bytes) -> float:
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        samples = sum(int(frame.samples) for frame in container.decode(stream))
        return samples / stream.codec_context.sample_rate


def _record(name: str, text: str, shard: int, clip: int, rng: np.random.Generator) -> dict[str, object]:
    return {
        "raw_text": text.capitalize() + ".",
        "text": text,
        "duration": 0.0,
        "LUFS": round(float(rng.uniform(-30, -18)), 2),
        "gender": str(rng.choice(["male", "female"])),
        "age_group": str(rng.choice(["18-25", "26-35", "36-45", "46-60"])),
        "location": str(rng.choice(["Kigali", "Huye", "Musanze", "Rubavu"])),
        "image_category": "daily_life",
        "image_sub_category": "market",
        "audio_filepath": name,
        "image_filepath": f"image_{shard:03d}_{clip:05d}.jpg",
        "shard_id": shard,
        "image_shard_id": shard,
        "creator_id": f"speaker_{int(rng.integers(0, 40)):03d}",
    }


def _apply_defect(
    defect: str | None, data: bytes, record: dict[str, object], rng: np.random.Generator
) -> tuple[bytes, dict[str, object], bool, bool]:
    """Return (audio bytes, record, include the tar member, include the manifest record)."""
    if defect == "undecodable":
        return rng.bytes(len(data)), record, True, True
    if defect == "truncated":
        return data[: len(data) // 2], record, True, True
    if defect == "missing_audio":
        return data, record, False, True
    if defect == "no_record":
        return data, record, True, False
    if defect == "empty_text":
        return data, {**record, "text": "", "raw_text": ""}, True, True
    if defect == "null_text":
        return data, {**record, "text": None, "raw_text": None}, True, True
    if defect == "too_short":
        short = encode_webm_opus(synthesize("a", ToneVoice(), rng)[: int(0.2 * ENCODE_RATE)])
        return short, {**record, "text": "a", "raw_text": "A.", "duration": 0.2}, True, True
    if defect == "outside_alphabet":
        return data, {**record, "text": f"{record['text']} 42é"}, True, True
    return data, record, True, True


def _write_tar_xz(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, mode="w:xz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
