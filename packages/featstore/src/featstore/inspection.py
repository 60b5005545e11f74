"""`featstore inspect`: per-utterance audio statistics computed with dask.array, and the findings.

The work is a dask array of utterance positions in storage order (shard, bucket, offset), cut
into blocks of about TARGET_BLOCK_SAMPLES samples that never cross a shard. Each task opens the
store with the reader (once per worker thread) and measures its utterances one at a time, so it
decodes each chunk of its shard about once and holds one utterance and a few chunks in memory.
The number of tasks grows with hours of audio, not with the number of bucket arrays, and the work
shows live in the Dask dashboard.

Silence is `librosa.effects.trim(audio, top_db=40, frame_length=400, hop_length=160)`, computed
with the same numpy operations (`_trim_bounds`, checked against librosa in the tests): librosa's
first call imports scipy, scikit-learn and numba, 5-7 s in every worker process, and their
teardown made workers overrun the nanny's 4 s shutdown grace.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from featstore.errors import FeatstoreError
from featstore.reader import FeatStore, open_store

# Columns of the per-utterance statistics, in the order `_measure_block` returns them.
STATS = ("peak", "lead_silence", "trail_silence")
# Leading and trailing audio this far below the utterance's loudest frame counts as silence.
SILENCE_TOP_DB = 40.0
SILENCE_FRAME = 400  # samples per RMS frame (25 ms)
SILENCE_HOP = 160  # samples between frames (10 ms)
# An utterance whose speaking rate is this many robust standard deviations from the median is listed.
OUTLIER_Z = 3.5
# Below this source level (dBFS, measured before normalization) a clip is near-silence: usually a
# dead microphone or a wrong gain, whatever its transcript says.
QUIET_DB = -60.0
TARGET_BLOCK_SAMPLES = 2**22  # ~4 min of audio per task: few tasks, each a sequential read of one shard
# Storage order needs only the chunks under the current utterance; the default cache is for random access.
WORKER_CACHE_BYTES = 8 * 2**20


@dataclass(frozen=True)
class Inspection:
    """Per-utterance measurements (arrays aligned with the store's index) and the findings."""

    store: FeatStore
    peak: np.ndarray  # max |normalized sample|: the crest factor, in standard deviations
    lead_silence: np.ndarray  # seconds
    trail_silence: np.ndarray  # seconds
    speaking_rate: np.ndarray  # characters (no spaces) per second of speech between the silences
    outliers: list[dict[str, Any]]
    quiet: list[dict[str, Any]]  # utterances below `quiet_db`, quietest first
    quiet_db: float

    def per_shard(self) -> dict[str, dict[str, float]]:
        counts = np.bincount(self.store.shard_codes, minlength=len(self.store.shard_names))
        seconds = np.bincount(
            self.store.shard_codes, weights=self.store.durations, minlength=len(self.store.shard_names)
        )
        return {
            name: {"utterances": int(n), "hours": float(s / 3600)}
            for name, n, s in zip(self.store.shard_names, counts, seconds, strict=False)
        }

    def characters(self) -> dict[str, int]:
        return dict(Counter("".join(self.store.texts)).most_common())

    def rejects(self) -> dict[str, int]:
        return dict(Counter(r["reason"] for r in self.store.rejects).most_common())


def inspect_store(store: FeatStore, quiet_db: float = QUIET_DB) -> Inspection:
    """Measure every utterance with dask (uses the active Dask client, if any)."""
    stats = np.zeros((len(store), len(STATS)), dtype=np.float64)
    if len(store):
        order, measured = _measure_in_storage_order(store)
        stats[order] = measured.compute()
    voiced = np.maximum(store.durations - stats[:, 1] - stats[:, 2], 0.1)
    letters = np.array([len(text.replace(" ", "")) for text in store.texts], dtype=np.float64)
    rate = letters / voiced
    return Inspection(
        store,
        stats[:, 0],
        stats[:, 1],
        stats[:, 2],
        rate,
        _rate_outliers(store, rate),
        _quiet_utterances(store, quiet_db),
        quiet_db,
    )


def _measure_in_storage_order(store: FeatStore) -> tuple[np.ndarray, da.Array]:
    """Utterance indices in storage order, and a dask array of their stats in that order."""
    order = np.lexsort((store.offsets, store.buckets, store.shard_codes))
    # The index keeps each shard's utterances together, in shard order, and so does `order`.
    starts = np.searchsorted(store.shard_codes, np.arange(len(store.shard_names) + 1))
    parts = []
    for code, shard in enumerate(store.shard_names):
        members = order[starts[code] : starts[code + 1]]
        if not members.size:
            continue
        counts = _block_counts(store.lengths[members])
        # Positions within the shard, not store indices: a worker that opens the store later may
        # see shards that completed since, which renumber the index but never a shard's rows.
        positions = da.from_array(members - starts[code], chunks=(counts,))
        parts.append(
            positions.map_blocks(
                _measure_block,
                url=store.location.url,
                shard=shard,
                checksum=store.checksums[shard],
                dtype=np.float64,
                chunks=(counts, (len(STATS),)),
                new_axis=1,
                meta=np.empty((0, len(STATS)), dtype=np.float64),
            )
        )
    return order, da.concatenate(parts)


def _block_counts(lengths: np.ndarray) -> tuple[int, ...]:
    """Utterances per block, consecutive ones grouped until a block reaches TARGET_BLOCK_SAMPLES."""
    counts: list[int] = []
    size = count = 0
    for length in lengths.tolist():
        size, count = size + length, count + 1
        if size >= TARGET_BLOCK_SAMPLES:
            counts.append(count)
            size = count = 0
    if count:
        counts.append(count)
    return tuple(counts)


class _Readers(threading.local):
    """One reader per store URL and thread: the reader's chunk cache is not thread-safe."""

    def __init__(self) -> None:
        self.stores: dict[str, FeatStore] = {}


_READERS = _Readers()


def _open_shard(url: str, shard: str, checksum: str) -> tuple[FeatStore, int]:
    """This thread's reader of `url`, and the index of `shard`'s first utterance in it."""
    store = _READERS.stores.get(url)
    if store is None or store.checksums.get(shard) != checksum:  # first use, or the store changed since
        store = _READERS.stores[url] = open_store(url, cache_bytes=WORKER_CACHE_BYTES)
    if store.checksums.get(shard) != checksum:
        raise FeatstoreError(f"{url}: shard {shard} changed while it was inspected; run inspect again")
    return store, int(np.searchsorted(store.shard_codes, store.shard_names.index(shard)))


def _measure_block(positions: np.ndarray, url: str, shard: str, checksum: str) -> np.ndarray:
    """Peak and leading/trailing silence (seconds) of the utterances at these positions of `shard`."""
    store, start = _open_shard(url, shard, checksum)
    rate = float(store.sample_rate)
    out = np.zeros((positions.size, len(STATS)), dtype=np.float64)
    for row, i in enumerate((positions + start).tolist()):
        audio = store.raw_audio(i).astype(np.float32) * store.scales[i]
        first, last = _trim_bounds(audio)
        out[row] = (float(np.abs(audio).max()), first / rate, (audio.size - last) / rate)
    return out


def _trim_bounds(audio: np.ndarray) -> tuple[int, int]:
    """`librosa.effects.trim(audio, top_db=SILENCE_TOP_DB, frame_length=SILENCE_FRAME, hop_length=SILENCE_HOP)[1]`.

    The same float32 operations in the same order, so the same frames count as silent, without
    librosa's import or its copies of the padded audio and of the overlapping frames' squares.
    """
    half = SILENCE_FRAME // 2
    squares = np.zeros(audio.size + 2 * half, dtype=np.float32)  # librosa pads the audio with zeros
    np.square(audio, out=squares[half:-half], dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(squares, SILENCE_FRAME)[::SILENCE_HOP]
    rms = np.sqrt(np.mean(frames, axis=-1))  # librosa.feature.rms(center=True)
    amin = 1e-5**2  # amplitude_to_db(rms, ref=np.max): power_to_db(rms**2, ref=max(rms)**2, amin=1e-5**2)
    db = 10.0 * np.log10(np.maximum(amin, np.square(rms)))
    db -= 10.0 * np.log10(np.maximum(amin, np.max(rms) ** 2))
    loud = np.flatnonzero(db > -SILENCE_TOP_DB)
    if not loud.size:
        return 0, 0
    return int(loud[0]) * SILENCE_HOP, min(audio.size, (int(loud[-1]) + 1) * SILENCE_HOP)


def _rate_outliers(store: FeatStore, rate: np.ndarray) -> list[dict[str, Any]]:
    """Utterances whose speaking rate is far from the median: often a wrong or cut transcript."""
    if rate.size < 3:
        return []
    median = float(np.median(rate))
    spread = 1.4826 * float(np.median(np.abs(rate - median))) or 1e-9
    z = (rate - median) / spread
    flagged = np.flatnonzero(np.abs(z) > OUTLIER_Z)
    return [
        {
            "index": int(i),
            "audio_filepath": store.record(int(i)).get("audio_filepath", ""),
            "text": store.texts[i],
            "seconds": round(float(store.durations[i]), 2),
            "chars_per_second": round(float(rate[i]), 2),
            "z": round(float(z[i]), 1),
        }
        for i in flagged[np.argsort(-np.abs(z[flagged]))]
    ]


def _quiet_utterances(store: FeatStore, quiet_db: float) -> list[dict[str, Any]]:
    """Utterances recorded below `quiet_db` dBFS (from the index: no audio is read)."""
    quiet = np.flatnonzero(store.levels_db < quiet_db)
    return [
        {
            "index": int(i),
            "audio_filepath": store.record(int(i)).get("audio_filepath", ""),
            "text": store.texts[i],
            "seconds": round(float(store.durations[i]), 2),
            "level_db": round(float(store.levels_db[i]), 1),
        }
        for i in quiet[np.argsort(store.levels_db[quiet], kind="stable")]
    ]


def inspection_summary(inspection: Inspection) -> dict[str, Any]:
    """JSON-ready findings."""
    store = inspection.store
    return {
        "store": store.location.url,
        "utterances": len(store),
        "hours": float(store.durations.sum() / 3600),
        "shards": inspection.per_shard(),
        "duration_seconds": _describe(store.durations),
        "level_db": _describe(store.levels_db),
        "clipping_rate": _describe(store.clipping),
        "peak": _describe(inspection.peak),
        "lead_silence_seconds": _describe(inspection.lead_silence),
        "trail_silence_seconds": _describe(inspection.trail_silence),
        "speaking_rate": _describe(inspection.speaking_rate),
        "speaking_rate_outliers": inspection.outliers,
        "quiet_db": inspection.quiet_db,
        "quiet_utterances": inspection.quiet,
        "characters": inspection.characters(),
        "rejects": inspection.rejects(),
    }


def _describe(values: np.ndarray) -> dict[str, float]:
    if not values.size:
        return {}
    q = np.quantile(values, [0, 0.05, 0.5, 0.95, 1])
    return {
        "min": float(q[0]),
        "p5": float(q[1]),
        "median": float(q[2]),
        "p95": float(q[3]),
        "max": float(q[4]),
        "mean": float(np.mean(values)),
    }


def format_inspection(summary: dict[str, Any]) -> list[str]:
    """The findings as terminal lines."""
    lines = [f"store          {summary['store']}: {summary['utterances']} utterances, {summary['hours']:.3f} h"]
    for name in (
        "duration_seconds",
        "level_db",
        "peak",
        "lead_silence_seconds",
        "trail_silence_seconds",
        "speaking_rate",
    ):
        d = summary[name]
        if d:
            lines.append(
                f"{name:<22} median {d['median']:8.3f}   p5 {d['p5']:8.3f}   p95 {d['p95']:8.3f}   max {d['max']:8.3f}"
            )
    clipping = summary["clipping_rate"]
    if clipping:
        lines.append(f"{'clipping_rate':<22} max {clipping['max']:.4f}")
    lines.append(f"outliers       {len(summary['speaking_rate_outliers'])} utterances with an unusual speaking rate")
    for outlier in summary["speaking_rate_outliers"][:10]:
        lines.append(
            f"  {outlier['audio_filepath']}  {outlier['chars_per_second']} chars/s (z {outlier['z']})  "
            f"{outlier['text'][:60]!r}"
        )
    quiet = summary["quiet_utterances"]
    lines.append(f"quiet          {len(quiet)} utterances below {summary['quiet_db']:g} dBFS (near-silence)")
    for utterance in quiet[:10]:
        lines.append(f"  {utterance['audio_filepath']}  {utterance['level_db']} dBFS  {utterance['text'][:60]!r}")
    lines.append("rejects        " + (", ".join(f"{k} {v}" for k, v in summary["rejects"].items()) or "none"))
    return lines
