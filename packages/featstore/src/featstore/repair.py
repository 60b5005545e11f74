"""`featstore repair`: rebuild the root's list of complete shards from the shard groups.

The index is derived data: every complete shard group holds its own columns, rejects and checksum,
so a lost or garbled `index/zarr.json` is rebuilt from them. Only the manifest-level rejects
(records whose clip is in no shard, bad manifest lines) live in the index alone: they are kept
when the old index is readable, and a re-run of the ingest recomputes them otherwise.
`--redo SHARD` marks a damaged shard unfinished, so that the next ingest run rewrites it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import zarr

from featstore.chunks import SHARDS_GROUP
from featstore.errors import FeatstoreError
from featstore.index import CompleteShards, consolidate_index, read_index, stored_shard_names
from featstore.layout import is_store, open_root, set_attribute
from featstore.lock import writer_lock
from featstore.shardmeta import SHARD_KEY, shard_attributes
from featstore.storage import locate


@dataclass(frozen=True)
class RepairReport:
    complete: list[str]  # shards in the rebuilt index
    left_out: list[str]  # shard groups that are not complete: the next ingest run redoes them
    kept_manifest_rejects: bool

    def lines(self) -> list[str]:
        lines = [f"index rebuilt from {len(self.complete)} complete shard(s)"]
        if self.left_out:
            lines.append(f"not complete, redone by re-running the ingest: {', '.join(self.left_out)}")
        if not self.kept_manifest_rejects:
            lines.append("the old index was unreadable: re-run the ingest to restore its manifest-level rejects")
        return lines


def repair_store(path: str | Path, redo: Iterable[str] = (), note: Callable[[str], None] = print) -> RepairReport:
    store = locate(path)
    if not is_store(store):
        raise FeatstoreError(f"{store.url}: not a featstore store (no featstore root metadata)")
    with writer_lock(store, note):
        root, _ = open_root(store, mode="r+")
        for shard in redo:
            _mark_for_redo(root, shard)
        try:
            rejects = [reject for reject in read_index(root).rejects if reject.shard is None]
            kept = True
        except FeatstoreError:
            rejects, kept = [], False
        index = consolidate_index(store, root, CompleteShards(rejects))
        complete = [entry.name for entry in index.shards]
        left_out = [name for name in stored_shard_names(root) if name not in complete]
    return RepairReport(complete=complete, left_out=left_out, kept_manifest_rejects=kept)


def _mark_for_redo(root: zarr.Group, shard: str) -> None:
    attributes = shard_attributes(root, shard)
    if attributes is None:
        raise FeatstoreError(f"--redo: the store has no shard group {shard} with readable metadata")
    group = root[f"{SHARDS_GROUP}/{shard}"]
    assert isinstance(group, zarr.Group)
    set_attribute(group, SHARD_KEY, {"status": "redo", "source": attributes.get("source", {})})
