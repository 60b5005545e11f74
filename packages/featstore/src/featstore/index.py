"""The consolidated index: the rows of every complete shard, in shard order, in one object.

    index/    attrs["featstore_index"]: shards, checksums, rejects and one list per column

It is rewritten whole when a shard completes, so a reader sees a shard completely or not at all.
It is derived data: `consolidate_index` rebuilds it from the shard groups (and `repair` does).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import zarr
from zarr.core.sync import sync

from featstore.chunks import SHARDS_GROUP
from featstore.errors import FeatstoreError
from featstore.layout import INDEX_GROUP, INDEX_KEY, set_attribute
from featstore.shardmeta import Reject, ShardSummary, read_shard_summary

# The per-utterance columns: `shard` is a code into `shards`, the rest come from the shards' rows
# (what readers need for every utterance, ~100 bytes each; the manifest fields stay in the shards).
INDEX_COLUMNS = ("shard", "bucket", "offset", "length", "scale", "level_db", "clipping", "text")


@dataclass(frozen=True)
class IndexColumns:
    """The consolidated index: complete shards, their checksums, every reject, and the row columns."""

    shards: list[str] = field(default_factory=list)
    checksums: dict[str, str] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)
    shard: list[int] = field(default_factory=list)
    bucket: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)
    length: list[int] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    level_db: list[float] = field(default_factory=list)
    clipping: list[float] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def column(self, name: str) -> list[Any]:
        """One per-utterance column by name (one of INDEX_COLUMNS)."""
        values: list[Any] = getattr(self, name)
        return values

    def add_shard(self, name: str, summary: ShardSummary) -> None:
        """Append a complete shard's rows, checksum and rejects."""
        code = len(self.shards)
        self.shards.append(name)
        self.checksums[name] = summary.checksum
        self.shard.extend([code] * len(summary.rows.text))
        for column in INDEX_COLUMNS[1:]:
            self.column(column).extend(getattr(summary.rows, column))
        self.rejects.extend(summary.rejects)

    def to_json(self) -> dict[str, Any]:
        return {
            "shards": self.shards,
            "checksums": self.checksums,
            "rejects": [reject.to_json() for reject in self.rejects],
            **{column: self.column(column) for column in INDEX_COLUMNS},
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> IndexColumns:
        return cls(
            shards=list(value["shards"]),
            checksums=dict(value["checksums"]),
            rejects=[Reject.from_json(reject) for reject in value["rejects"]],
            **{column: list(value[column]) for column in INDEX_COLUMNS},
        )


def consolidate_index(
    root: zarr.Group, global_rejects: list[Reject], seen: dict[str, ShardSummary] | None = None
) -> IndexColumns:
    """Rebuild the consolidated index from every complete shard, in shard order, and write it whole.

    `seen` caches the shards already found complete (without their manifest fields), so that a
    long ingest does not re-read every finished shard each time another one completes.
    """
    seen = {} if seen is None else seen
    shards_group = root[SHARDS_GROUP]
    assert isinstance(shards_group, zarr.Group)
    index = IndexColumns(rejects=list(global_rejects))
    for shard in sorted(shard_group_names(shards_group), key=natural_key):
        if shard not in seen:
            summary = read_shard_summary(root, shard)
            if summary is None:
                continue
            seen[shard] = summary.without_fields()
        index.add_shard(shard, seen[shard])
    set_attribute(_index_group(root), INDEX_KEY, index.to_json())
    return index


def read_index(root: zarr.Group) -> IndexColumns:
    try:
        index = root[INDEX_GROUP].attrs.get(INDEX_KEY)
    except (KeyError, ValueError, TypeError):  # index/zarr.json deleted or garbled
        index = None
    if not isinstance(index, dict):
        raise FeatstoreError(
            "the store's index is missing or unreadable; "
            "run `featstore repair STORE`, or re-run the ingest, to rebuild it"
        )
    missing = [column for column in ("shards", "checksums", "rejects", *INDEX_COLUMNS) if column not in index]
    if missing:
        raise FeatstoreError(
            f"store index lacks {', '.join(missing)}: written by an older featstore; re-ingest with --overwrite"
        )
    return IndexColumns.from_json(index)


def shard_group_names(shards_group: zarr.Group) -> list[str]:
    """The shard groups zarr can open; one being created, or whose metadata is lost, is left out."""
    with warnings.catch_warnings():  # a shard group being created right now is not a group yet: skip it quietly
        warnings.filterwarnings("ignore", category=UserWarning, module="zarr")
        try:
            return list(shards_group.group_keys())
        except (ValueError, TypeError):  # a garbled zarr.json among them: look at each one alone
            return [name for name in _child_names(shards_group) if _is_group(shards_group, name)]


def stored_shard_names(root: zarr.Group) -> list[str]:
    """Every entry under shards/, whether or not zarr can open it as a group."""
    shards = root[SHARDS_GROUP]
    assert isinstance(shards, zarr.Group)
    return sorted((name for name in _child_names(shards) if name != "zarr.json"), key=natural_key)


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort 'audio_2' before 'audio_10'."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _child_names(group: zarr.Group) -> list[str]:
    async def collect() -> list[str]:
        return [name async for name in group.store.list_dir(group.path)]

    return sync(collect())


def _is_group(parent: zarr.Group, name: str) -> bool:
    try:
        return isinstance(parent[name], zarr.Group)
    except (KeyError, ValueError, TypeError):
        return False


def _index_group(root: zarr.Group) -> zarr.Group:
    """The index group, recreated (it holds nothing but its attributes) when its metadata is lost or garbled."""
    try:
        group = root[INDEX_GROUP]
        if isinstance(group, zarr.Group):
            return group
    except (KeyError, ValueError, TypeError):
        pass
    return root.create_group(INDEX_GROUP, overwrite=True)
