"""The store's index (formats 2 and 3): a small list of complete shards at the root, columns in the shards.

    index/    attrs["featstore_index"]: {"shards": [{name, clips, samples, checksum}, ...],
                                         "rejects": [the manifest-level rejects]}

The list is O(shards) bytes, replaced whole (write-then-rename on local disks) when a shard
completes, so a reader sees a shard completely or not at all; it is joined from entries encoded
once each (`CompleteShards`), so the work per completed shard does not grow with the utterances
already stored, and barely with the shards. The per-utterance columns live in each shard
group (featstore.columns); `load_columns` concatenates them into contiguous numpy arrays.
It is derived data: `consolidate_index` rebuilds it from the shard groups (and `repair` does).
"""

from __future__ import annotations

import bisect
import functools
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from featstore.chunks import SHARDS_GROUP
from featstore.columns import ColumnReader, TextColumn
from featstore.errors import FeatstoreError
from featstore.layout import INDEX_GROUP, INDEX_KEY
from featstore.shardmeta import Reject, ShardSummary, read_shard_summary
from featstore.storage import Location, dump_json


@dataclass(frozen=True)
class ShardEntry:
    """One complete shard as the root lists it: enough to read its columns and check its checksum."""

    name: str
    clips: int
    samples: int
    checksum: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "clips": self.clips, "samples": self.samples, "checksum": self.checksum}

    @classmethod
    def of(cls, name: str, summary: ShardSummary) -> ShardEntry:
        return cls(name, summary.clips, summary.samples, summary.checksum)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ShardEntry:
        return cls(str(value["name"]), int(value["clips"]), int(value["samples"]), str(value["checksum"]))


@dataclass(frozen=True)
class StoreIndex:
    """The complete shards, in shard order, and the rejects that only the manifests reveal."""

    shards: tuple[ShardEntry, ...] = ()
    rejects: tuple[Reject, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"shards": [entry.to_json() for entry in self.shards], "rejects": [r.to_json() for r in self.rejects]}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> StoreIndex:
        return cls(
            shards=tuple(ShardEntry.from_json(entry) for entry in value["shards"]),
            rejects=tuple(Reject.from_json(reject) for reject in value["rejects"]),
        )


@dataclass(frozen=True)
class IndexColumns:
    """What a reader needs of every utterance up front, concatenated in shard order.

    Numbers in the narrowest type that holds them (offsets and lengths lie within one shard's
    samples), so that a million utterances take 20 bytes each (text offsets included) plus
    their compressed texts.
    """

    shard: np.ndarray  # code into StoreIndex.shards
    bucket: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    scale: np.ndarray  # float32 (the stored float64 is what the checksum hashed)
    texts: TextColumn


class CompleteShards:
    """The complete shards a writer knows of, in shard order, each with its list entry already in JSON.

    Adding a shard is a sorted insert, and the root's list is the join of the entries' JSON, so
    the work per completed shard stays flat as the list grows: encoding the whole list anew
    each time made the 150th shard's update twice the first's.
    """

    def __init__(self, rejects: Sequence[Reject]) -> None:
        self.rejects = tuple(rejects)
        self.summaries: dict[str, ShardSummary] = {}
        self._names: list[str] = []  # in natural order
        self._entries: dict[str, str] = {}
        self._rejects_json = dump_json([reject.to_json() for reject in self.rejects]).decode()

    def add(self, name: str, summary: ShardSummary) -> None:
        if name not in self.summaries:
            bisect.insort(self._names, name, key=natural_key)
        self.summaries[name] = summary
        self._entries[name] = dump_json(ShardEntry.of(name, summary).to_json()).decode()

    def replace_all(self, summaries: dict[str, ShardSummary]) -> None:
        self.summaries, self._names, self._entries = {}, [], {}
        for name, summary in summaries.items():
            self.add(name, summary)

    def index(self) -> StoreIndex:
        entries = (ShardEntry.of(name, self.summaries[name]) for name in self._names)
        return StoreIndex(tuple(entries), self.rejects)

    def index_metadata(self) -> bytes:
        """The index group's zarr.json, holding `StoreIndex.to_json()` as its attribute."""
        shards = ",".join([self._entries[name] for name in self._names])
        index = f'{{"shards":[{shards}],"rejects":{self._rejects_json}}}'
        return f'{{"zarr_format":3,"node_type":"group","attributes":{{"{INDEX_KEY}":{index}}}}}'.encode()


def consolidate_index(store: Location, root: zarr.Group, complete: CompleteShards) -> StoreIndex:
    """List every complete shard group, in shard order, and replace the root's list with it.

    `complete` keeps the summaries of shards already found complete, so that a later call reads
    only new shards' small summaries; `record_completed` then needs no listing at all.
    """
    shards_group = root[SHARDS_GROUP]
    assert isinstance(shards_group, zarr.Group)
    found = {}
    for shard in shard_group_names(shards_group):
        summary = complete.summaries.get(shard) or read_shard_summary(root, shard)
        if summary is not None:
            found[shard] = summary
    complete.replace_all(found)
    write_index(store, complete)
    return complete.index()


def record_completed(store: Location, complete: CompleteShards, shard: str, summary: ShardSummary) -> None:
    """Add a shard that just completed to the root's list (`complete` filled by `consolidate_index`).

    The work is one sorted insert and one write of O(shards) bytes, whatever the utterances
    already stored, and nearly flat in the number of shards.
    """
    complete.add(shard, summary)
    write_index(store, complete)


def write_index(store: Location, complete: CompleteShards) -> None:
    """Replace the index group's metadata in one write (its directory recreated if it was lost)."""
    group = store.child(INDEX_GROUP)
    fs, path = group.filesystem()
    fs.makedirs(path, exist_ok=True)
    group.child("zarr.json").write_atomic(complete.index_metadata())


def read_index(root: zarr.Group) -> StoreIndex:
    try:
        index = root[INDEX_GROUP].attrs.get(INDEX_KEY)
    except (KeyError, ValueError, TypeError):  # index/zarr.json deleted or garbled
        index = None
    try:
        return StoreIndex.from_json(index)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        raise FeatstoreError(
            "the store's index is missing or unreadable; "
            "run `featstore repair STORE`, or re-run the ingest, to rebuild it"
        ) from None


def load_columns(store: Location, index: StoreIndex) -> IndexColumns:
    """Read every listed shard's columns (a file each) into arrays allocated once at their full size.

    Filling preallocated arrays, rather than concatenating per-shard parts, keeps the reader's
    memory at the columns themselves: no transient copies, no heap left fragmented by the parts.
    """
    reader = ColumnReader(*store.filesystem())
    counts = [entry.clips for entry in index.shards]
    codes = np.repeat(np.arange(len(counts), dtype=narrowest_int(len(counts))), counts)
    samples = narrowest_int(max((entry.samples for entry in index.shards), default=0), at_least=np.int32)
    dtypes = {"bucket": np.dtype(np.int16), "offset": samples, "length": samples, "scale": np.dtype(np.float32)}
    columns = {name: read_column(reader, index, name, dtype) for name, dtype in dtypes.items()}
    return IndexColumns(shard=codes, **columns, texts=_load_texts(reader, index, codes))


def load_float_column(store: Location, index: StoreIndex, name: str) -> np.ndarray:
    """One float column (`level_db`, `clipping`) of every listed shard, as float32: read when first asked for."""
    return read_column(ColumnReader(*store.filesystem()), index, name, np.dtype(np.float32))


def read_column(reader: ColumnReader, index: StoreIndex, name: str, dtype: np.dtype[Any]) -> np.ndarray:
    """One numeric column of every listed shard, end to end, in `dtype`."""
    column = np.empty(sum(entry.clips for entry in index.shards), dtype=dtype)
    start = 0
    for entry in index.shards:
        column[start : start + entry.clips] = reader.numeric(entry.name, name, entry.clips)
        start += entry.clips
    return column


def _load_texts(reader: ColumnReader, index: StoreIndex, codes: np.ndarray) -> TextColumn:
    """Each shard's text offsets (`clips + 1` a shard, end to end) and its compressed text chunks."""
    bounds = np.empty(codes.size + len(index.shards), dtype=np.int32)  # widened if a shard's texts need it
    chunks = []
    start = 0
    for entry in index.shards:
        offsets = reader.numeric_offsets(entry.name, "text", entry.clips)
        if offsets[-1] > np.iinfo(bounds.dtype).max:
            bounds = bounds.astype(np.int64)
        bounds[start : start + entry.clips + 1] = offsets
        start += entry.clips + 1
        chunks.append(reader.compressed_chunks(entry.name, "text", int(offsets[-1])))
    return TextColumn(codes, bounds, chunks, reader.decode)


def narrowest_int(largest: int, at_least: type[np.signedinteger[Any]] = np.int16) -> np.dtype[Any]:
    """The smallest signed integer type, from `at_least` up, that holds 0..largest (signed, so that
    differences stay safe; sample counts start at int32, so that sums of a few do not wrap)."""
    for dtype in (np.int16, np.int32):
        if np.iinfo(dtype).bits >= np.iinfo(at_least).bits and largest <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


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


@functools.lru_cache(maxsize=65_536)  # sorted inserts compare each name many times: parse it once
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
