"""`featstore migrate`: convert a format-1 or format-2 store to format 3 in place, without touching its audio.

Format 1 kept each shard's rows in its group's attributes and the whole index in one JSON
attribute: migration writes each complete shard's rows as its column arrays and drops them from
its summary. Format 2 had the columns, with each text column in one bit-shuffled chunk:
migration rewrites them in the chunks format 3 readers keep in memory. Then it writes the root's
list of complete shards, and bumps the root's format version last: a migration stopped at any
point is finished by running it again (a converted shard has no rows attribute left, and
rewriting texts again changes nothing). Shards that were not complete stay as they are; the next
ingest redoes them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import zarr

from featstore.chunks import SHARDS_GROUP
from featstore.columns import ColumnReader, rewrite_utf8_columns, write_columns
from featstore.errors import FeatstoreError
from featstore.index import CompleteShards, consolidate_index, shard_group_names
from featstore.layout import FORMAT_VERSION, INDEX_GROUP, INDEX_KEY, ROOT_KEY, is_store, open_root, set_attribute
from featstore.lock import writer_lock
from featstore.shardmeta import SHARD_KEY, Reject, shard_attributes
from featstore.storage import locate


def migrate_store(path: str | Path, note: Callable[[str], None] = print) -> int:
    """Convert the store to FORMAT_VERSION; return the number of shards converted (0: already current)."""
    store = locate(path)
    if not is_store(store):
        raise FeatstoreError(f"{store.url}: not a featstore store (no featstore root metadata)")
    with writer_lock(store, note):
        root, info = open_root(store, mode="r+", migrating=True)
        if info.format_version == FORMAT_VERSION:
            return 0
        rejects = _manifest_rejects(root)
        shards = root[SHARDS_GROUP]
        assert isinstance(shards, zarr.Group)
        reader = ColumnReader(*store.filesystem())
        converted = sum(_convert_shard(root, reader, shard) for shard in shard_group_names(shards))
        consolidate_index(store, root, CompleteShards(rejects))
        meta: dict[str, Any] = dict(root.attrs[ROOT_KEY])  # type: ignore[arg-type]
        set_attribute(root, ROOT_KEY, {**meta, "format_version": FORMAT_VERSION})
    return converted


def _convert_shard(root: zarr.Group, reader: ColumnReader, shard: str) -> bool:
    """Write a complete shard's columns as format 3 lays them out; False for a shard not complete."""
    attributes = shard_attributes(root, shard)
    if attributes is None or attributes.get("status") != "complete":
        return False
    group = root[f"{SHARDS_GROUP}/{shard}"]
    assert isinstance(group, zarr.Group)
    if "rows" not in attributes:  # format 2, or a format-1 shard converted by a run that stopped
        rewrite_utf8_columns(group, reader, shard, int(attributes["clips"]))
        return True
    write_columns(group, attributes["rows"])
    set_attribute(group, SHARD_KEY, {key: value for key, value in attributes.items() if key != "rows"})
    return True


def _manifest_rejects(root: zarr.Group) -> list[Reject]:
    """The rejects only the format-1 index knew (none when it is unreadable: a re-run of the ingest restores them)."""
    try:
        index: Any = root[INDEX_GROUP].attrs.get(INDEX_KEY)
        return [Reject.from_json(reject) for reject in index["rejects"] if reject.get("shard") is None]
    except (KeyError, TypeError, ValueError, AttributeError):
        return []
