"""`featstore verify`: recompute every shard's checksum and check the index's consistency."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from featstore.chunks import bucket_array_name
from featstore.columns import ColumnReader, DamagedColumn
from featstore.errors import FeatstoreError
from featstore.layout import open_root
from featstore.reader import FeatStore, open_store
from featstore.shardmeta import read_shard_summary
from featstore.shardwriter import hash_utterance


class VerifyError(FeatstoreError):
    """The store is inconsistent; the message names the first problem found."""


def verify_store(path: str | Path, echo: Callable[[str], None] = lambda _: None) -> int:
    """Check the whole store; return the number of utterances checked, or raise VerifyError."""
    try:
        store = open_store(path, cache_bytes=0)
    except DamagedColumn as error:
        raise VerifyError(str(error)) from None
    root, _ = open_root(store.location)
    fs, root_path = store.location.filesystem()
    columns = ColumnReader(fs, root_path)
    for code, shard in enumerate(store.shard_names):
        rows = np.flatnonzero(store.shard_codes == code)
        summary = read_shard_summary(root, shard)
        if summary is None:
            raise VerifyError(f"{shard}: in the index but its group is not complete")
        if summary.clips != rows.size:
            raise VerifyError(f"{shard}: the index lists {rows.size} utterances, the shard says {summary.clips}")
        _check_layout(root, shard, store, rows)
        checksum = _checksum(store, columns, shard, rows)
        if checksum != summary.checksum or checksum != store.checksums[shard]:
            raise VerifyError(f"{shard}: checksum mismatch (stored {summary.checksum[:19]}, computed {checksum[:19]})")
        echo(f"ok  {shard}: {rows.size} utterances, {checksum[:19]}")
    return len(store)


def _check_layout(root: Any, shard: str, store: FeatStore, rows: np.ndarray) -> None:
    """Offsets within their array, utterances neither overlapping nor leaving gaps."""
    buckets, offsets, lengths = store.buckets[rows], store.offsets[rows], store.lengths[rows]
    group = root["shards"][shard]
    for bucket in np.unique(buckets):
        mine = buckets == bucket
        order = np.argsort(offsets[mine], kind="stable")
        starts, sizes = offsets[mine][order], lengths[mine][order]
        ends = starts + sizes
        name = bucket_array_name(int(bucket))
        if name not in group:
            raise VerifyError(f"{shard}/{name}: array missing")
        if starts[0] != 0 or np.any(starts[1:] != ends[:-1]):
            raise VerifyError(f"{shard}/{name}: utterances overlap or leave gaps")
        if ends[-1] != group[name].shape[0]:
            raise VerifyError(f"{shard}/{name}: index ends at sample {ends[-1]}, array holds {group[name].shape[0]}")


def _checksum(store: FeatStore, columns: ColumnReader, shard: str, rows: np.ndarray) -> str:
    """The writer's checksum, recomputed from what a reader sees: audio, the stored columns, shard fields.

    The float columns are hashed as stored (float64), not as the reader's float32 copies.
    """
    digest = hashlib.sha256()
    fields = columns.fields(shard, rows.size)
    exact = {name: columns.numeric(shard, name, rows.size).tolist() for name in ("scale", "level_db", "clipping")}
    for position, i in enumerate(rows.tolist()):
        row = {
            "bucket": int(store.buckets[i]),
            "offset": int(store.offsets[i]),
            "length": int(store.lengths[i]),
            **{name: values[position] for name, values in exact.items()},
            "text": store.texts[i],
            "fields": fields[position],
        }
        hash_utterance(digest, store.raw_audio(i), row)
    return "sha256:" + digest.hexdigest()
