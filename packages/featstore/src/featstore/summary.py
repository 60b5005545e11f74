"""What `featstore info` reports: counts, hours, rejects and the character table, from the index."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from featstore.reader import FeatStore


def summarize(store: FeatStore) -> dict[str, Any]:
    """A JSON-ready summary of a store; reads the index only, never audio."""
    alphabet = set(store.info.settings.alphabet)
    characters = Counter("".join(store.texts))
    durations = store.durations
    per_shard = np.bincount(store.shard_codes, minlength=len(store.shard_names))
    seconds_per_shard = np.bincount(store.shard_codes, weights=durations, minlength=len(store.shard_names))
    stored_bytes = store.location.total_bytes()
    return {
        "store": store.location.url,
        "format_version": store.info.format_version,
        "sample_rate": store.sample_rate,
        "utterances": len(store),
        "hours": float(durations.sum() / 3600),
        "shards": {
            name: {"utterances": int(n), "hours": float(s / 3600), "checksum": store.checksums[name]}
            for name, n, s in zip(store.shard_names, per_shard, seconds_per_shard, strict=False)
        },
        "sources_pending": sorted(set(store.info.sources) - set(store.shard_names)),
        "duration_seconds": _quantiles(durations),
        "rejects": dict(sorted(Counter(r["reason"] for r in store.rejects).items())),
        "characters": {
            char: {"count": count, "in_alphabet": char in alphabet} for char, count in sorted(characters.items())
        },
        "outside_alphabet": "".join(sorted(c for c in characters if c not in alphabet)),
        "stored_bytes": stored_bytes,
        "bytes_per_audio_hour": stored_bytes / (float(durations.sum()) / 3600) if durations.sum() else None,
        "settings": store.info.settings.to_json(),
    }


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if not values.size:
        return {}
    points = np.quantile(values, [0.0, 0.5, 0.9, 1.0])
    return {
        "min": float(points[0]),
        "median": float(points[1]),
        "p90": float(points[2]),
        "max": float(points[3]),
        "mean": float(values.mean()),
    }


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The summary as aligned text lines for a terminal."""
    lines = [
        f"store          {summary['store']} (format {summary['format_version']}, {summary['sample_rate']} Hz)",
        f"utterances     {summary['utterances']} ({summary['hours']:.3f} h)",
        f"shards         {len(summary['shards'])} complete"
        + (
            f", {len(summary['sources_pending'])} not complete: {', '.join(summary['sources_pending'])}"
            if summary["sources_pending"]
            else ""
        ),
    ]
    if summary["duration_seconds"]:
        d = summary["duration_seconds"]
        lines.append(
            f"durations      min {d['min']:.2f} s, median {d['median']:.2f} s, "
            f"p90 {d['p90']:.2f} s, max {d['max']:.2f} s"
        )
    per_hour = summary["bytes_per_audio_hour"]
    lines.append(
        f"stored         {summary['stored_bytes'] / 1e6:.1f} MB "
        + (f"({per_hour / 1e6:.1f} MB per audio hour)" if per_hour is not None else "(no audio)")
    )
    rejects = ", ".join(f"{reason} {n}" for reason, n in summary["rejects"].items()) or "none"
    lines.append(f"rejects        {rejects}")
    lines.append(
        "characters     "
        + "  ".join(
            f"{_show(c)}:{v['count']}" + ("" if v["in_alphabet"] else "!") for c, v in summary["characters"].items()
        )
    )
    if summary["outside_alphabet"]:
        lines.append(
            f"               ! outside the alphabet: {' '.join(_show(c) for c in summary['outside_alphabet'])}"
        )
    for name, shard in summary["shards"].items():
        lines.append(
            f"  {name:<12} {shard['utterances']:>7} utterances {shard['hours']:8.3f} h  {shard['checksum'][:19]}"
        )
    return lines


def _show(char: str) -> str:
    return repr(char) if char.isspace() or not char.isprintable() else char
