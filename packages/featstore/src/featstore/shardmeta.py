"""What a shard group says about itself: its rows, rejects and checksum, once complete.

A shard group's attrs["featstore_shard"] says "writing" (or "redo") until its task is done; the
task then replaces it, in one write, with the shard's summary. These frozen dataclasses are that
summary as modules pass it around; `to_json` and `from_json` are its form on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import zarr

from featstore.chunks import SHARDS_GROUP

SHARD_KEY = "featstore_shard"
# Every row of a shard, in the order of its utterances; `fields` are the other manifest fields.
ROW_COLUMNS = ("bucket", "offset", "length", "scale", "level_db", "clipping", "text", "fields")


@dataclass(frozen=True)
class Reject:
    """A clip left out, and why. `shard` is None for what the manifests alone reveal."""

    audio_filepath: str
    reason: str
    detail: str = ""
    shard: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The form in the index and in `FeatStore.rejects`: with its shard (null for manifest rejects)."""
        return {"shard": self.shard, **self.to_shard_json()}

    def to_shard_json(self) -> dict[str, Any]:
        """The form in its own shard group, which names the shard already."""
        return {"audio_filepath": self.audio_filepath, "reason": self.reason, "detail": self.detail}

    @classmethod
    def from_json(cls, value: dict[str, Any], shard: str | None = None) -> Reject:
        return cls(
            audio_filepath=str(value.get("audio_filepath", "")),
            reason=str(value["reason"]),
            detail=str(value.get("detail", "")),
            shard=shard if shard is not None else value.get("shard"),
        )


@dataclass(frozen=True)
class ShardRows:
    """A shard's index rows as columns (lists, as they are stored: one JSON array per column)."""

    bucket: list[int]
    offset: list[int]
    length: list[int]
    scale: list[float]
    level_db: list[float]
    clipping: list[float]
    text: list[str]
    fields: list[dict[str, Any]]

    def to_json(self) -> dict[str, list[Any]]:
        return {column: getattr(self, column) for column in ROW_COLUMNS}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ShardRows:
        return cls(**{column: list(value[column]) for column in ROW_COLUMNS})


@dataclass(frozen=True)
class ShardSummary:
    """A complete shard: where it came from, its rows, rejects and checksum."""

    source: dict[str, Any]
    checksum: str
    clips: int
    samples: int
    rows: ShardRows
    rejects: tuple[Reject, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "complete",
            "source": self.source,
            "checksum": self.checksum,
            "clips": self.clips,
            "samples": self.samples,
            "rows": self.rows.to_json(),
            "rejects": [reject.to_shard_json() for reject in self.rejects],
        }

    @classmethod
    def from_json(cls, value: dict[str, Any], shard: str) -> ShardSummary:
        return cls(
            source=dict(value["source"]),
            checksum=str(value["checksum"]),
            clips=int(value["clips"]),
            samples=int(value["samples"]),
            rows=ShardRows.from_json(value["rows"]),
            rejects=tuple(Reject.from_json(reject, shard) for reject in value["rejects"]),
        )

    def without_fields(self) -> ShardSummary:
        """What the consolidated index needs of the shard (manifest fields stay in the shard group)."""
        return replace(self, rows=replace(self.rows, fields=[]))


def shard_attributes(root: zarr.Group, shard: str) -> dict[str, Any] | None:
    """The shard group's attributes as stored, or None when the shard was never started or is unreadable."""
    try:
        attributes = root[f"{SHARDS_GROUP}/{shard}"].attrs.get(SHARD_KEY)
    except (KeyError, ValueError, TypeError):  # never started, or its metadata lost or garbled: not complete
        return None
    return dict(attributes) if isinstance(attributes, dict) else None


def read_shard_summary(root: zarr.Group, shard: str) -> ShardSummary | None:
    """The shard's summary when the shard is complete; None when it is not (or its summary is damaged)."""
    attributes = shard_attributes(root, shard)
    if attributes is None or attributes.get("status") != "complete":
        return None
    try:
        return ShardSummary.from_json(attributes, shard)
    except (KeyError, TypeError, ValueError):  # a damaged summary is no proof of a complete shard
        return None


def is_complete(summary: ShardSummary | None, source: dict[str, Any]) -> bool:
    """A shard is done when its group says so and was made from the same source file."""
    return summary is not None and summary.source.get("size") == source.get("size")
