"""`featstore inspect`: per-utterance audio statistics computed with dask.array, and the findings.

Every bucket array is opened with `dask.array.from_zarr` in blocks whose edges fall on utterance
edges; one `map_blocks` call per array then measures its utterances. The whole
store is read once, in parallel, within each worker's memory, and the work shows live in the
Dask dashboard.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.base import compute

from featstore.layout import SHARDS_GROUP, bucket_array_name
from featstore.reader import FeatStore

# Columns of the per-utterance statistics, in the order `_measure_block` returns them.
STATS = ("peak", "lead_silence", "trail_silence")
# Leading and trailing audio this far below the utterance's peak counts as silence.
SILENCE_TOP_DB = 40.0
# An utterance whose speaking rate is this many robust standard deviations from the median is listed.
OUTLIER_Z = 3.5
TARGET_BLOCK_SAMPLES = 2**22  # ~4 min of audio per task: few tasks, bounded memory


@dataclass(frozen=True)
class Inspection:
    """Per-utterance measurements (arrays aligned with the store's index) and the findings."""

    store: FeatStore
    peak: np.ndarray  # max |normalized sample|: the crest factor, in standard deviations
    lead_silence: np.ndarray  # seconds
    trail_silence: np.ndarray  # seconds
    speaking_rate: np.ndarray  # characters (no spaces) per second of speech between the silences
    outliers: list[dict[str, Any]]

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


def inspect_store(store: FeatStore) -> Inspection:
    """Measure every utterance with dask (uses the active Dask client, if any)."""
    tasks = []
    order: list[np.ndarray] = []
    for code, shard in enumerate(store.shard_names):
        for bucket in np.unique(store.buckets[store.shard_codes == code]):
            members = np.flatnonzero((store.shard_codes == code) & (store.buckets == bucket))
            members = members[np.argsort(store.offsets[members])]
            array = store.location.child(SHARDS_GROUP, shard, bucket_array_name(int(bucket)))
            tasks.append(
                _measure_array(array.url, store.lengths[members], float(store.sample_rate), store.scales[members])
            )
            order.append(members)
    results = compute(*tasks) if tasks else []
    stats = np.zeros((len(store), len(STATS)), dtype=np.float64)
    for members, values in zip(order, results, strict=False):
        stats[members] = values
    voiced = np.maximum(store.durations - stats[:, 1] - stats[:, 2], 0.1)
    letters = np.array([len(text.replace(" ", "")) for text in store.texts], dtype=np.float64)
    rate = letters / voiced
    return Inspection(store, stats[:, 0], stats[:, 1], stats[:, 2], rate, _rate_outliers(store, rate))


def _measure_array(path: str, lengths: np.ndarray, sample_rate: float, scales: np.ndarray) -> da.Array:
    """A dask array of per-utterance stats for one bucket array, blocks aligned to utterances."""
    block_sizes, utterances_per_block = _utterance_blocks(lengths)
    # Blocks cut on utterance edges: each task slices its samples straight from zarr, no rechunking.
    audio = da.from_zarr(path, chunks=(tuple(block_sizes),))
    bounds = np.concatenate([[0], np.cumsum(utterances_per_block)])
    return audio.map_blocks(
        _measure_block,
        dtype=np.float64,
        chunks=(tuple(utterances_per_block), (len(STATS),)),
        new_axis=1,
        lengths=[lengths[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=False)],
        scales=[scales[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=False)],
        sample_rate=sample_rate,
        meta=np.empty((0, len(STATS)), dtype=np.float64),
    )


def _utterance_blocks(lengths: np.ndarray) -> tuple[list[int], list[int]]:
    """Group consecutive utterances into blocks of about TARGET_BLOCK_SAMPLES samples."""
    sizes: list[int] = []
    counts: list[int] = []
    size = count = 0
    for length in lengths.tolist():
        size, count = size + length, count + 1
        if size >= TARGET_BLOCK_SAMPLES:
            sizes.append(size)
            counts.append(count)
            size = count = 0
    if count:
        sizes.append(size)
        counts.append(count)
    return sizes, counts


def _measure_block(
    block: np.ndarray,
    lengths: list[np.ndarray],
    scales: list[np.ndarray],
    sample_rate: float,
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    import librosa

    assert block_info is not None
    index = block_info[0]["chunk-location"][0]
    out = np.zeros((len(lengths[index]), len(STATS)))
    start = 0
    for row, (length, scale) in enumerate(zip(lengths[index].tolist(), scales[index].tolist(), strict=False)):
        audio = block[start : start + length].astype(np.float32) * np.float32(scale)
        start += length
        _, (first, last) = librosa.effects.trim(audio, top_db=SILENCE_TOP_DB, frame_length=400, hop_length=160)
        out[row] = (float(np.abs(audio).max()), first / sample_rate, (length - last) / sample_rate)
    return out


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
    lines.append("rejects        " + (", ".join(f"{k} {v}" for k, v in summary["rejects"].items()) or "none"))
    return lines
