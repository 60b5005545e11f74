"""What a shard group says about itself once complete: its source, counts, rejects and checksum.

A shard group's attrs["featstore_shard"] says "writing" (or "redo") until its task is done; the
task writes the row columns (featstore.columns), then replaces the attribute, in one write, with
the shard's summary. These frozen dataclasses are that summary as modules pass it around;
`to_json` and `from_json` are its form on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
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
class ShardSummary:
    """A complete shard: where it came from, its counts, rejects and checksum."""

    source: dict[str, Any]
    checksum: str
    clips: int
    samples: int
    rejects: tuple[Reject, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "complete",
            "source": self.source,
            "checksum": self.checksum,
            "clips": self.clips,
            "samples": self.samples,
            "rejects": [reject.to_shard_json() for reject in self.rejects],
        }

    @classmethod
    def from_json(cls, value: dict[str, Any], shard: str) -> ShardSummary:
        return cls(
            source=dict(value["source"]),
            checksum=str(value["checksum"]),
            clips=int(value["clips"]),
            samples=int(value["samples"]),
            rejects=tuple(Reject.from_json(reject, shard) for reject in value["rejects"]),
        )


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
