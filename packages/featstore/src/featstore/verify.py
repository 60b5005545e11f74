"""`featstore verify`: recompute every shard's checksum and check the index's consistency."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from featstore.errors import FeatstoreError
from featstore.index import INDEX_COLUMNS, IndexColumns, read_index
from featstore.layout import open_root
from featstore.reader import open_store
from featstore.shardmeta import read_shard_summary
from featstore.shardwriter import hash_utterance


class VerifyError(FeatstoreError):
    """The store is inconsistent; the message names the first problem found."""


def verify_store(path: str | Path, echo: Callable[[str], None] = lambda _: None) -> int:
    """Check the whole store; return the number of utterances checked, or raise VerifyError."""
    store = open_store(path, cache_bytes=0)
    root, _ = open_root(store.location)
    index = read_index(root)
    lengths = {column: len(index.column(column)) for column in INDEX_COLUMNS}
    if len(set(lengths.values())) != 1:
        raise VerifyError(f"index columns differ in length: {lengths}")
    codes = np.asarray(index.shard, dtype=np.int64)
    for code, shard in enumerate(index.shards):
        rows = np.flatnonzero(codes == code)
        summary = read_shard_summary(root, shard)
        if summary is None:
            raise VerifyError(f"{shard}: in the index but its group is not complete")
        if summary.clips != rows.size:
            raise VerifyError(f"{shard}: the index lists {rows.size} utterances, the shard says {summary.clips}")
        _check_layout(root, shard, index, rows)
        checksum = _checksum(store, index, rows, summary.rows.fields)
        if checksum != summary.checksum or checksum != index.checksums[shard]:
            raise VerifyError(f"{shard}: checksum mismatch (stored {summary.checksum[:19]}, computed {checksum[:19]})")
        echo(f"ok  {shard}: {rows.size} utterances, {checksum[:19]}")
    return len(index.shard)


def _check_layout(root: Any, shard: str, index: IndexColumns, rows: np.ndarray) -> None:
    """Offsets within their array, utterances neither overlapping nor leaving gaps."""
    buckets = np.asarray(index.bucket)[rows]
    offsets = np.asarray(index.offset, dtype=np.int64)[rows]
    lengths = np.asarray(index.length, dtype=np.int64)[rows]
    group = root["shards"][shard]
    for bucket in np.unique(buckets):
        mine = buckets == bucket
        order = np.argsort(offsets[mine], kind="stable")
        starts, sizes = offsets[mine][order], lengths[mine][order]
        ends = starts + sizes
        name = f"b{int(bucket):02d}"
        if name not in group:
            raise VerifyError(f"{shard}/{name}: array missing")
        if starts[0] != 0 or np.any(starts[1:] != ends[:-1]):
            raise VerifyError(f"{shard}/{name}: utterances overlap or leave gaps")
        if ends[-1] != group[name].shape[0]:
            raise VerifyError(f"{shard}/{name}: index ends at sample {ends[-1]}, array holds {group[name].shape[0]}")


def _checksum(store: Any, index: IndexColumns, rows: np.ndarray, fields: list[dict[str, Any]]) -> str:
    """The writer's checksum, recomputed from what a reader sees: audio, index columns, shard fields."""
    digest = hashlib.sha256()
    for position, i in enumerate(rows.tolist()):
        row = {column: index.column(column)[i] for column in INDEX_COLUMNS[1:]}
        hash_utterance(digest, store.raw_audio(i), {**row, "fields": fields[position]})
    return "sha256:" + digest.hexdigest()
