"""Issue 13, target 4: which codec chain stores an audio hour in <= 58 MB at >= 60 dB SNR and decodes fast.

Every candidate codes the audio as the store lays it out (per shard and duration bucket, clips end
to end, 2**18-sample chunks, the last one zero-padded) and is measured on the same chunks: bytes per
audio hour, SNR against the float audio before quantization (minimum over clips, and overall), and
encode and decode speed in audio-seconds per CPU-second on one thread (Blosc's thread pool off, as
in the reader; per chunk the least time of --passes passes, the chains taking turns). A chain that
zarr-python can declare is written as a small Zarr v3 array and read back by zarr-python and by
tensorstore, so the tables say which independent reader decodes it, and that the bytes measured
here are the bytes zarr writes.

Materials, each through featstore's own `decode_clip` -> `normalize` -> quantization path:
- `tone`: the benchmarks' tone-language corpus (bench/corpus.py, 8 shards x 60 clips, 1.58 h),
  ingested with `featstore ingest`; checked: every clip quantized here equals the store's samples
  and scale, and today's chain gives exactly the store's audio chunk bytes.
- `tone+noise20`: the same float audio plus white noise at 20 dB SNR, normalized again.
- `speech`: espeak-ng sentences with a -50 dB noise floor through 32 kbit/s webm/opus
  (bench/speech_bytes.py's material); left out, with a note, when espeak-ng is missing.

    apt-get install espeak-ng
    pip install pcodec soundfile
    python bench/codecs.py --speech-minutes 30 --out bench/out/codecs.md

About 16 minutes on two shared cores (load ~6); --passes 1 --speech-minutes 5 for a quick look.
The output holds the tables and the run's facts; the recommendation is written by hand from them.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numcodecs
import numcodecs.blosc
import numpy as np
import soundfile
import zarr
from numcodecs.compat import ensure_ndarray
from zarr.abc.codec import ArrayArrayCodec, ArrayBytesCodec, BytesBytesCodec
from zarr.codecs import BloscCodec, ZstdCodec

from featstore.audio import INT16_MAX, QUANT_STEP, SAMPLE_RATE, decode_clip, normalize, quantize
from featstore.chunks import CHUNK_SAMPLES, array_codec, bucket_of, chunk_codec
from featstore.reader import open_store

from corpus import ensure_corpus, source_fingerprint

CHUNK_BYTES = CHUNK_SAMPLES * 2
TARGET_MB_PER_HOUR = 58.0  # 1/4 of float32 Arrow's 230.7 MB per audio hour
TARGET_SNR_DB = 60.0
TARGET_DECODE = 60_000.0  # audio-s per CPU-s: well above the loader's 15,000 audio-s/s on one core
# Uniform quantization noise is step**2 / 12 against a unit deviation: 60 dB needs step <= sqrt(12) * 1e-3.
STEP_FOR_TARGET = math.sqrt(12) * 10 ** (-TARGET_SNR_DB / 20)
STEPS = (QUANT_STEP, 2.5e-3, 3.0e-3, 3.2e-3, 3.4e-3)
BITROUND_KEEPBITS = 8  # relative error <= 2**-9: ~62 dB on the tone store; 7 bits gave ~56


class Stage(Protocol):
    """One step of a chain, numcodecs' interface: encode going in, decode coming back."""

    def encode(self, buf: Any) -> Any: ...
    def decode(self, buf: Any, out: Any = None) -> Any: ...


class ZigZag:
    """Signed values as unsigned by magnitude (0, -1, 1, -2, ...): a small negative has zero high bits.

    In two's complement -1 is all ones, so the high bit planes that bit shuffle hands to zstd
    follow the signs, of the samples or of a delta's residuals. No numcodecs or Zarr codec does this: as a codec it
    would be a custom one that zarr-python, tensorstore and every other reader lack.
    """

    def encode(self, buf: Any) -> np.ndarray:
        x = ensure_ndarray(buf).view("<i2")
        return ((x << 1) ^ (x >> 15)).view("<u2")

    def decode(self, buf: Any, out: Any = None) -> np.ndarray:
        u = ensure_ndarray(buf).view("<u2")
        return (u >> 1).view("<i2") ^ -((u & 1).view("<i2"))


class Int64Delta:
    """numcodecs' Delta, undone as featstore's own reader could: widened to int64, summed in place.

    Same bytes as `numcodecs.delta`. Its decode, numpy's int16 cumulative sum, took ~0.53 ms per
    chunk here; int64 in place ~0.17 ms (a fresh output array adds page faults, ~1.3 ms).
    """

    def __init__(self) -> None:
        self.codec = numcodecs.Delta(dtype="<i2")

    def encode(self, buf: Any) -> Any:
        return self.codec.encode(buf)

    def decode(self, buf: Any, out: Any = None) -> np.ndarray:
        wide = ensure_ndarray(buf).view("<i2").astype(np.int64)
        np.cumsum(wide, out=wide)
        return wide.astype(np.int16)  # modulo 2**16, as the differences wrapped


class Flac:
    """FLAC through libsndfile (`soundfile`), one stream per chunk: the lossless audio reference point."""

    def __init__(self, level: int) -> None:
        self.level = level

    def encode(self, buf: Any) -> bytes:
        out = io.BytesIO()
        samples = ensure_ndarray(buf).view("<i2")
        soundfile.write(out, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=self.level / 8)
        return out.getvalue()

    def decode(self, buf: Any, out: Any = None) -> np.ndarray:
        samples, _ = soundfile.read(io.BytesIO(bytes(buf)), dtype="int16")
        return samples


@dataclass(frozen=True)
class Candidate:
    """A chain of stages; `declared` is how zarr-python declares each one, None where no codec exists."""

    name: str
    stages: tuple[Stage, ...]
    declared: tuple[Any, ...]
    floats: bool = False  # codes the normalized float32 audio, not the int16 samples

    @property
    def zarr_codecs(self) -> dict[str, Any] | None:
        """zarr.create_array's filters/serializer/compressors for this chain, or None (no Zarr codec)."""
        if any(codec is None for codec in self.declared):
            return None
        serializers = [c for c in self.declared if isinstance(c, ArrayBytesCodec)]
        return {
            "filters": [c for c in self.declared if isinstance(c, ArrayArrayCodec)],
            "serializer": serializers[0] if serializers else "auto",
            "compressors": [c for c in self.declared if isinstance(c, BytesBytesCodec)] or None,
        }

    def encode(self, chunk: np.ndarray) -> bytes:
        data: Any = chunk
        for stage in self.stages:
            data = stage.encode(data)
        return bytes(ensure_ndarray(data).view("u1"))  # lengths and equality below need plain bytes

    def expected(self, chunk: np.ndarray) -> np.ndarray:
        """What decoding must give back: the chunk itself, or for the float chain what BitRound made of it."""
        return ensure_ndarray(self.stages[0].decode(self.stages[0].encode(chunk))) if self.floats else chunk

    def decode(self, data: bytes) -> np.ndarray:
        value: Any = data
        for stage in reversed(self.stages):
            value = stage.decode(value)
        return ensure_ndarray(value).view("<f4" if self.floats else "<i2")


def blosc(
    cname: Literal["zstd", "lz4"], clevel: int, shuffle: Literal["bitshuffle", "shuffle"], blocksize: int = 0
) -> tuple[numcodecs.Blosc, BloscCodec]:
    """A Blosc stage and its Zarr v3 declaration (`blocksize` in bytes; 0 lets Blosc choose)."""
    flag = {"bitshuffle": numcodecs.Blosc.BITSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE}[shuffle]
    stage = numcodecs.Blosc(cname=cname, clevel=clevel, shuffle=flag, blocksize=blocksize)
    return stage, BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle, blocksize=blocksize)


def delta() -> tuple[numcodecs.Delta, Any]:
    """numcodecs' Delta on int16: differences wrap modulo 2**16 and the cumulative sum unwraps them."""
    from zarr.codecs.numcodecs import Delta

    return numcodecs.Delta(dtype="<i2"), Delta(dtype="<i2")


def candidate(name: str, *parts: tuple[Any, Any], floats: bool = False) -> Candidate:
    return Candidate(name, tuple(p[0] for p in parts), tuple(p[1] for p in parts), floats)


def candidates() -> list[Candidate]:
    """Today's chain first (the baseline of every ratio), then the alternatives."""
    from zarr.codecs.numcodecs import BitRound, PCodec

    today = (chunk_codec(), array_codec())
    whole = CHUNK_BYTES  # one Blosc block per chunk: zstd sees the whole 512 KB at once
    zigzag = (ZigZag(), None)
    return [
        candidate("today: blosc zstd1 bitshuffle", today),
        candidate("blosc zstd1 byte shuffle", blosc("zstd", 1, "shuffle")),
        candidate("blosc zstd1 bitshuffle, 1 block", blosc("zstd", 1, "bitshuffle", whole)),
        candidate("blosc zstd3 bitshuffle, 1 block", blosc("zstd", 3, "bitshuffle", whole)),
        candidate("blosc zstd5 bitshuffle, 1 block", blosc("zstd", 5, "bitshuffle", whole)),
        candidate("blosc lz4 bitshuffle", blosc("lz4", 5, "bitshuffle")),
        candidate(
            "zstd3 + checksum, no shuffle", (numcodecs.Zstd(level=3, checksum=True), ZstdCodec(level=3, checksum=True))
        ),
        candidate("zigzag + zstd1 bitshuffle, 1 block", zigzag, blosc("zstd", 1, "bitshuffle", whole)),
        candidate("delta + today", delta(), today),
        candidate("delta + blosc zstd1 bitshuffle, 1 block", delta(), blosc("zstd", 1, "bitshuffle", whole)),
        candidate(
            "delta (int64 undo) + zstd1 bitshuffle, 1 block",
            (Int64Delta(), delta()[1]),
            blosc("zstd", 1, "bitshuffle", whole),
        ),
        candidate("delta + blosc zstd1 byte shuffle", delta(), blosc("zstd", 1, "shuffle")),
        candidate(
            "delta x2 (FLAC order 2) + zstd1 bitshuffle, 1 block",
            delta(),
            delta(),
            blosc("zstd", 1, "bitshuffle", whole),
        ),
        candidate(
            "order 1 + zigzag + zstd1 bitshuffle, 1 block", delta(), zigzag, blosc("zstd", 1, "bitshuffle", whole)
        ),
        candidate(
            "order 2 + zigzag + zstd1 bitshuffle, 1 block",
            delta(),
            delta(),
            zigzag,
            blosc("zstd", 1, "bitshuffle", whole),
        ),
        candidate("pcodec level 8", (numcodecs.pcodec.PCodec(level=8), PCodec(level=8))),
        candidate("FLAC level 5 (soundfile)", (Flac(5), None)),
        candidate("FLAC level 8 (soundfile)", (Flac(8), None)),
        candidate(
            f"float32 + bitround {BITROUND_KEEPBITS} + today",
            (numcodecs.BitRound(keepbits=BITROUND_KEEPBITS), BitRound(keepbits=BITROUND_KEEPBITS)),
            today,
            floats=True,
        ),
    ]


SWEEP = (  # the chains measured at every quantization step
    "today: blosc zstd1 bitshuffle",
    "blosc zstd1 bitshuffle, 1 block",
    "blosc zstd3 bitshuffle, 1 block",
    "delta + blosc zstd1 bitshuffle, 1 block",
    "order 1 + zigzag + zstd1 bitshuffle, 1 block",
    "FLAC level 5 (soundfile)",
)


# --- materials -----------------------------------------------------------------------------------


@dataclass
class Material:
    """Normalized float32 clips before quantization, and which clips each stored array holds, in order."""

    name: str
    how: str
    clips: list[np.ndarray]
    arrays: list[list[int]]
    checks: list[str] = field(default_factory=list)

    @property
    def audio_seconds(self) -> float:
        return sum(clip.size for clip in self.clips) / SAMPLE_RATE


def tone_material(store_path: Path) -> Material:
    """The tone corpus as ingested: its store gives the layout, its tar shards the float audio."""
    corpus = ensure_corpus(shards=8, clips_per_shard=60, words=(15, 26))
    if not store_path.exists():
        ingest(corpus.split_dir, store_path)
    store = open_store(store_path)
    by_name = {}
    for shard in store.shard_names:
        (tar_path,) = corpus.split_dir.rglob(f"{shard}.tar.xz")
        by_name.update(read_members(tar_path))
    clips, same = [], 0
    for i in range(len(store)):
        reference = normalize(decode_clip(by_name[Path(store.record(i)["audio_filepath"]).name]))
        stored = quantize(reference)
        same += int(np.array_equal(stored.samples, store.raw_audio(i)) and stored.scale == store.scales[i])
        clips.append(reference)
    order = np.lexsort((store.offsets, store.buckets, store.shard_codes))
    arrays: dict[tuple[int, int], list[int]] = {}
    for i in order.tolist():
        arrays.setdefault((int(store.shard_codes[i]), int(store.buckets[i])), []).append(i)
    material = Material("tone", f"{corpus.root.name}, ingested to {store_path}", clips, list(arrays.values()))
    material.checks.append(f"clips quantized here equal to the store's samples and scale: {same} of {len(store)}")
    audio = audio_chunk_bytes(store_path)
    rest = sum(p.stat().st_size for p in store_path.rglob("*") if p.is_file()) - audio
    material.checks.append(f"store audio chunk files: {audio:,} bytes; everything else in the store: {rest:,} bytes")
    return material


def ingest(split_dir: Path, out: Path) -> None:
    print(f"ingesting {split_dir} into {out}", flush=True)
    command = ["featstore", "ingest", str(split_dir), "--out", str(out), "--no-progress"]
    command += ["--dashboard-address", "127.0.0.1:0", "--alphabet", "abcdefghijkmnoprstuvwyz "]
    subprocess.run(command, check=True)


def read_members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path, "r:xz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def audio_chunk_bytes(store_path: Path) -> int:
    return sum(p.stat().st_size for p in store_path.glob("shards/*/b[0-9][0-9]/c/*"))


def noisy_copy(material: Material, snr_db: float, seed: int = 0) -> Material:
    """The same clips plus white noise `snr_db` below each clip's own level, normalized again."""
    rng = np.random.default_rng(seed)
    clips = [
        normalize(clip + rng.normal(0, float(clip.std()) * 10 ** (-snr_db / 20), clip.size).astype(np.float32))
        for clip in material.clips
    ]
    how = f"{material.name} plus white noise at {snr_db:g} dB SNR, normalized again"
    return Material(f"{material.name}+noise{snr_db:g}", how, clips, material.arrays)


def speech_material(minutes: float, seed: int = 0) -> Material:
    """espeak-ng utterances laid out like one shard: by duration bucket, in the order made."""
    from speech_bytes import speech_clip

    rng = np.random.default_rng(seed)
    clips: list[np.ndarray] = []
    while sum(c.size for c in clips) < minutes * 60 * SAMPLE_RATE:
        clips.append(normalize(speech_clip(rng, bitrate=32_000)))
    arrays: dict[int, list[int]] = {}
    for i, clip in enumerate(clips):
        arrays.setdefault(bucket_of(clip.size / SAMPLE_RATE), []).append(i)
    how = "espeak-ng, 8 voices, -50 dB noise floor, 32 kbit/s webm/opus (bench/speech_bytes.py), one shard"
    return Material("speech", how, clips, [arrays[b] for b in sorted(arrays)])


# --- quantization, layout, measurement -----------------------------------------------------------


def quantize_with_step(normalized: np.ndarray, step: float) -> tuple[np.ndarray, float]:
    """featstore.audio.quantize with its step as a parameter (`quantized` checks it equal at QUANT_STEP)."""
    peak = max(float(normalized.max()), -float(normalized.min()))
    deviation = float(np.sqrt(np.dot(normalized, normalized) / normalized.size))
    scale = max(step * deviation, peak / INT16_MAX) or step
    return np.round(normalized / np.float32(scale)).astype(np.int16), scale


@dataclass(frozen=True)
class Quantized:
    step: float
    samples: list[np.ndarray]
    snr_min_db: float
    snr_overall_db: float


def quantized(material: Material, step: float) -> Quantized:
    samples, signal, noise, snrs = [], 0.0, 0.0, []
    for clip in material.clips:
        ints, scale = quantize_with_step(clip, step)
        if step == QUANT_STEP and not same_as_featstore(clip, ints, scale):
            raise SystemExit("error: quantize_with_step differs from featstore.audio.quantize; update it")
        samples.append(ints)
        s, n = signal_and_noise(clip, ints.astype(np.float32) * np.float32(scale))
        signal, noise = signal + s, noise + n
        snrs.append(10 * math.log10(s / n))
    return Quantized(step, samples, min(snrs), 10 * math.log10(signal / noise))


def same_as_featstore(clip: np.ndarray, samples: np.ndarray, scale: float) -> bool:
    reference = quantize(clip)
    return reference.scale == scale and np.array_equal(reference.samples, samples)


def bitround_snr(material: Material) -> tuple[float, float]:
    """SNR of BitRound alone (elementwise, so per clip equals per chunk): minimum over clips, overall."""
    rounder = numcodecs.BitRound(keepbits=BITROUND_KEEPBITS)
    pairs = [signal_and_noise(clip, rounder.decode(rounder.encode(clip))) for clip in material.clips]
    overall = 10 * math.log10(sum(s for s, _ in pairs) / sum(n for _, n in pairs))
    return min(10 * math.log10(s / n) for s, n in pairs), overall


def signal_and_noise(reference: np.ndarray, approximation: np.ndarray) -> tuple[float, float]:
    reference64 = reference.astype(np.float64)
    return float(np.dot(reference64, reference64)), float(np.sum((reference64 - approximation) ** 2))


def stored_chunks(parts: list[np.ndarray], arrays: list[list[int]]) -> list[np.ndarray]:
    """Each array's clips end to end, cut in CHUNK_SAMPLES chunks, the last zero-padded (zarr stores it whole)."""
    chunks: list[np.ndarray] = []
    for members in arrays:
        joined = np.concatenate([parts[i] for i in members])
        padded = np.zeros(-(-joined.size // CHUNK_SAMPLES) * CHUNK_SAMPLES, dtype=joined.dtype)
        padded[: joined.size] = joined
        chunks.extend(padded.reshape(-1, CHUNK_SAMPLES))
    return chunks


@dataclass
class Measured:
    """One chain's bytes, and per chunk the least CPU time any pass took to encode and to decode it."""

    stored_bytes: int
    encode_s: np.ndarray
    decode_s: np.ndarray

    def rates(self) -> tuple[float, float]:
        """Encode and decode speed in audio-seconds per CPU-second."""
        seconds = self.encode_s.size * CHUNK_SAMPLES / SAMPLE_RATE
        return seconds / float(self.encode_s.sum()), seconds / float(self.decode_s.sum())


def measure(chains: list[Candidate], chunks_of: Callable[[Candidate], list[np.ndarray]], passes: int) -> list[Measured]:
    """Time every chunk through every chain, the chains taking turns in each pass.

    Four sessions share this machine's two cores: taking turns spreads a busy moment over all
    chains, and the least time per chunk over the passes is the least disturbed. Every chunk must
    come back exactly (for the float chain: as BitRound left it).
    """
    results = [Measured(0, np.full(len(chunks_of(c)), np.inf), np.full(len(chunks_of(c)), np.inf)) for c in chains]
    for turn in range(passes):
        for chain, measured in zip(chains, results, strict=True):
            stored = 0
            for k, chunk in enumerate(chunks_of(chain)):
                start = time.process_time()
                data = chain.encode(chunk)
                encoded = time.process_time()
                back = chain.decode(data)
                done = time.process_time()
                measured.encode_s[k] = min(measured.encode_s[k], encoded - start)
                measured.decode_s[k] = min(measured.decode_s[k], done - encoded)
                stored += len(data)
                if turn == 0 and not np.array_equal(back, chain.expected(chunk)):
                    raise SystemExit(f"error: {chain.name} did not return chunk {k} as it should")
            measured.stored_bytes = stored
        print(f"  pass {turn + 1} of {passes} done", flush=True)
    return results


# --- independent readers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Readers:
    codec_ids: str
    zarr_python: str
    tensorstore: str
    same_bytes: bool  # zarr's chunk files are exactly as long as this script's encoded chunks


def check_readers(chain: Candidate, sample: list[np.ndarray], scratch: Path) -> Readers | None:
    """Write `sample` as a Zarr v3 array with the chain, read it back with zarr-python and tensorstore."""
    codecs = chain.zarr_codecs
    if codecs is None:
        return None
    import tensorstore

    path = scratch / f"{len(list(scratch.iterdir()))}.zarr"
    data = np.concatenate(sample)
    expected = np.concatenate([chain.expected(chunk) for chunk in sample])
    array = zarr.create_array(path, shape=data.shape, chunks=(CHUNK_SAMPLES,), dtype=data.dtype, fill_value=0, **codecs)
    array[:] = data
    ids = ", ".join(describe(c) for c in json.loads((path / "zarr.json").read_text())["codecs"])
    by_zarr = "yes" if np.array_equal(zarr.open_array(path)[:], expected) else "WRONG VALUES"
    try:
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
        values = tensorstore.open(spec).result().read().result()
        by_tensorstore = "yes" if np.array_equal(values, expected) else "WRONG VALUES"
    except ValueError as error:  # FAILED_PRECONDITION: ... "numcodecs.delta" is not registered [tensorstore_spec=...]
        unknown = re.search(r'"([\w.]+)" is not registered', str(error))
        by_tensorstore = f"no: {unknown.group(1)} is not registered" if unknown else f"no: {str(error)[:80]}"
    sizes = [(path / "c" / str(k)).stat().st_size for k in range(len(sample))]
    return Readers(ids, by_zarr, by_tensorstore, sizes == [len(chain.encode(chunk)) for chunk in sample])


def describe(codec: dict[str, Any]) -> str:
    config = codec.get("configuration", {})
    shown = {k: v for k, v in config.items() if k not in ("endian", "typesize", "dtype", "astype")}
    return codec["name"] + (f"({', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else "")


# --- the run -------------------------------------------------------------------------------------


def run_material(material: Material, chains: list[Candidate], passes: int, scratch: Path) -> dict[str, Any]:
    print(f"{material.name}: {len(material.clips)} clips, {material.audio_seconds / 3600:.2f} h", flush=True)
    hours = material.audio_seconds / 3600
    today = quantized(material, QUANT_STEP)
    int_chunks = stored_chunks(today.samples, material.arrays)
    float_chunks = stored_chunks(material.clips, material.arrays)
    measured = measure(chains, lambda chain: float_chunks if chain.floats else int_chunks, passes)
    rows = []
    for chain, result in zip(chains, measured, strict=True):
        encode_rate, decode_rate = result.rates()
        snr = bitround_snr(material) if chain.floats else (today.snr_min_db, today.snr_overall_db)
        readers = check_readers(chain, (float_chunks if chain.floats else int_chunks)[:2], scratch)
        rows.append({"chain": chain.name, "mb_per_hour": result.stored_bytes / 1e6 / hours, "snr_min_db": snr[0],
                     "snr_overall_db": snr[1], "encode_rate": encode_rate, "decode_rate": decode_rate,
                     "stored_bytes": result.stored_bytes,
                     "readers": None if readers is None else readers.__dict__})  # fmt: skip
        print(f"  {chain.name}: {rows[-1]['mb_per_hour']:.1f} MB/h, decode {decode_rate:,.0f}", flush=True)
    sweep = []
    swept = [chain for chain in chains if chain.name in SWEEP]
    for step in STEPS:
        q = today if step == QUANT_STEP else quantized(material, step)
        chunks = int_chunks if step == QUANT_STEP else stored_chunks(q.samples, material.arrays)
        pairs = list(zip(swept, measure(swept, lambda chain: chunks, passes), strict=True))  # noqa: B023
        sweep.append({"step": step, "snr_min_db": q.snr_min_db, "snr_overall_db": q.snr_overall_db,
                      "mb_per_hour": {c.name: r.stored_bytes / 1e6 / hours for c, r in pairs},
                      "decode_rate": {c.name: r.rates()[1] for c, r in pairs}})  # fmt: skip
    return {"name": material.name, "how": material.how, "clips": len(material.clips), "hours": hours,
            "chunks": len(int_chunks), "checks": material.checks, "rows": rows, "sweep": sweep}  # fmt: skip


def delta_wrap_check() -> str:
    """Does numcodecs' Delta on int16 survive differences beyond the int16 range? (They wrap.)"""
    extreme = np.tile(np.array([-32768, 32767], dtype=np.int16), CHUNK_SAMPLES // 2)
    codec = numcodecs.Delta(dtype="<i2")
    encoded = codec.encode(extreme)
    back = codec.decode(encoded)
    return (
        f"numcodecs Delta on int16, alternating -32768/32767: differences stored as {encoded.dtype} "
        f"(wrapped, e.g. {int(encoded[1])}), decoded {'exactly' if np.array_equal(back, extreme) else 'WRONG'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("/tmp/featstore-bench/codecs/tone.zarr"))
    parser.add_argument("--speech-minutes", type=float, default=30.0, help="0 leaves the espeak-ng material out")
    parser.add_argument("--noise-db", type=float, default=20.0)
    parser.add_argument("--passes", type=int, default=3, help="timed passes; each chunk's least time counts")
    parser.add_argument("--out", type=Path, default=Path("bench/out/codecs.md"))
    args = parser.parse_args()
    numcodecs.blosc.use_threads = False  # one thread, as the reader decodes
    # zarr-python warns for every numcodecs.* codec; the tables say which readers decode them.
    warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3 specification")
    chains = candidates()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    tone = tone_material(args.store)
    materials = [tone, noisy_copy(tone, args.noise_db)]
    notes = [delta_wrap_check()]
    if args.speech_minutes > 0 and shutil.which("espeak-ng"):
        materials.append(speech_material(args.speech_minutes))
    elif args.speech_minutes > 0:
        notes.append("speech material left out: espeak-ng is not installed")
    with tempfile.TemporaryDirectory() as scratch:
        results = [run_material(m, chains, args.passes, Path(scratch)) for m in materials]
    facts = {"started": started, "command": " ".join(["python", *sys.argv]), "load_before": load_before,
             "load_after": os.getloadavg(), "notes": notes, "fingerprint": source_fingerprint()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"facts": facts, "materials": results}, indent=1, allow_nan=False)
    )
    args.out.write_text(render(facts, results))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


# --- the report ----------------------------------------------------------------------------------


def render(facts: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = [
        "# Codec alternatives for the stored audio (issue 13, target 4)",
        "",
        f"`{facts['command']}`, {facts['started']}, featstore {facts['fingerprint']['featstore_src_sha256']} "
        f"(checkout {facts['fingerprint']['checkout_head_when_run']}); load average "
        f"{facts['load_before'][0]:.1f} before, {facts['load_after'][0]:.1f} after (2 cores, shared).",
        "",
        f"Targets: <= {TARGET_MB_PER_HOUR:g} MB per audio hour (audio chunks only), SNR >= {TARGET_SNR_DB:g} dB "
        f"against the float audio before quantization, decode >= {TARGET_DECODE:,.0f} audio-s per CPU-s. "
        f"Speeds: one thread, CPU time, best of the passes, on whole {CHUNK_SAMPLES}-sample chunks. "
        "'vs today': against today's chain in the same run.",
        "",
        *[f"- {note}" for note in facts["notes"]],
    ]
    for material in results:
        lines += render_material(material)
    return "\n".join(lines) + "\n"


def render_material(m: dict[str, Any]) -> Iterator[str]:
    yield f"\n## {m['name']}: {m['clips']} clips, {m['hours']:.2f} audio h, {m['chunks']} chunks\n"
    yield f"{m['how']}."
    yield from (f"- {check}" for check in m["checks"])
    today = m["rows"][0]
    yield ""
    yield (
        "| chain | MB/audio h | vs today | SNR min / overall dB | encode audio-s/CPU-s | decode audio-s/CPU-s "
        "| decode vs today | Zarr v3 codecs | zarr-python | tensorstore |"
    )
    yield "|---|---|---|---|---|---|---|---|---|---|"
    for row in m["rows"]:
        readers = row["readers"]
        zarr_cells = (
            ["none (custom codec needed)", "no", "no"]
            if readers is None
            else [f"`{readers['codec_ids']}`" + ("" if readers["same_bytes"] else " (zarr's bytes differ)"),
                  readers["zarr_python"], readers["tensorstore"]]
        )  # fmt: skip
        yield (
            f"| {row['chain']} | {row['mb_per_hour']:.1f} | {row['mb_per_hour'] / today['mb_per_hour']:.3f} "
            f"| {row['snr_min_db']:.1f} / {row['snr_overall_db']:.1f} | {row['encode_rate']:,.0f} "
            f"| {row['decode_rate']:,.0f} | {row['decode_rate'] / today['decode_rate']:.2f} | "
            + " | ".join(zarr_cells)
            + " |"
        )
    yield ""
    yield (
        f"Quantization step (x the clip's deviation; {STEP_FOR_TARGET:.2e} gives {TARGET_SNR_DB:g} dB in theory), "
        "MB per audio hour (decode, thousands of audio-s per CPU-s):"
    )
    yield ""
    yield "| step | SNR theory | SNR min / overall dB | " + " | ".join(SWEEP) + " |"
    yield "|---|---|---|" + "---|" * len(SWEEP)
    for row in m["sweep"]:
        theory = 10 * math.log10(12 / row["step"] ** 2)
        sizes = " | ".join(f"{row['mb_per_hour'][n]:.1f} ({row['decode_rate'][n] / 1000:.0f}k)" for n in SWEEP)
        yield f"| {row['step']:.2e} | {theory:.1f} | {row['snr_min_db']:.1f} / {row['snr_overall_db']:.1f} | {sizes} |"


if __name__ == "__main__":
    main()
