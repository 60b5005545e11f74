"""Format 2 on disk: an independent Zarr v3 reader (tensorstore) reads every numeric index column,
and a format-1 store is refused with one line naming `featstore migrate`, which converts it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from featstore import open_store
from featstore.cli import main
from featstore.columns import NUMERIC_COLUMNS, ColumnReader
from featstore.index import CompleteShards, read_index, record_completed
from featstore.ingest import IngestSummary
from featstore.layout import INDEX_GROUP, INDEX_KEY, ROOT_KEY, open_root
from featstore.shardmeta import SHARD_KEY, Reject, ShardSummary
from featstore.storage import locate
from featstore.verify import verify_store

tensorstore = pytest.importorskip("tensorstore")


def read_with_tensorstore(array: Path) -> np.ndarray:
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(array)}}
    return np.asarray(tensorstore.open(spec).result().read().result())


def test_tensorstore_reads_every_numeric_index_column(ingested: tuple[Path, IngestSummary]) -> None:
    store = open_store(ingested[0])
    for name in (*NUMERIC_COLUMNS, "text_offsets"):
        parts = [read_with_tensorstore(ingested[0] / "shards" / shard / name) for shard in store.shard_names]
        if name == "text_offsets":
            assert [part.size - 1 for part in parts] == [int((store.shard_codes == c).sum()) for c in range(3)]
            continue
        ours = {"bucket": store.buckets, "offset": store.offsets, "length": store.lengths}.get(name)
        theirs = np.concatenate(parts)
        if ours is None:  # the float columns: the reader keeps float32 copies of the stored float64
            ours = {"scale": store.scales, "level_db": store.levels_db, "clipping": store.clipping}[name]
            np.testing.assert_allclose(theirs.astype(np.float32), ours)
        else:
            np.testing.assert_array_equal(theirs, ours)
    texts = [read_with_tensorstore(ingested[0] / "shards" / s / "text").tobytes().decode() for s in store.shard_names]
    assert "".join(texts) == "".join(store.texts)


def downgrade_to_format_1(store: Path) -> None:
    """Rewrite a format-2 store as format 1 (docs/FORMAT.md, "Format 1"): each shard's rows in its
    group's attributes, the whole index in one JSON attribute, column arrays absent."""
    root = zarr.open_group(str(store), mode="r+")
    old_index = root[INDEX_GROUP].attrs[INDEX_KEY]
    index: dict[str, Any] = {"shards": [], "checksums": {}, "rejects": list(old_index["rejects"])}  # type: ignore[call-overload]
    columns = ("shard", "bucket", "offset", "length", "scale", "level_db", "clipping", "text")
    index.update({column: [] for column in columns})
    reader = ColumnReader(*_filesystem(store))
    for code, entry in enumerate(old_index["shards"]):  # type: ignore[arg-type,union-attr]
        name, clips = entry["name"], entry["clips"]
        rows = {column: reader.numeric(name, column, clips).tolist() for column in NUMERIC_COLUMNS}
        text, offsets = reader.ragged(name, "text", clips)
        rows["text"] = [text[offsets[i] : offsets[i + 1]].tobytes().decode() for i in range(clips)]
        rows["fields"] = reader.fields(name, clips)
        group = root[f"shards/{name}"]
        summary = dict(group.attrs[SHARD_KEY])  # type: ignore[call-overload]
        group.attrs[SHARD_KEY] = {**summary, "rows": rows}
        for array in (*NUMERIC_COLUMNS, "text", "text_offsets", "fields", "fields_offsets"):
            shutil.rmtree(store / "shards" / name / array)
        index["shards"].append(name)
        index["checksums"][name] = summary["checksum"]
        index["shard"].extend([code] * clips)
        for column in columns[1:]:
            index[column].extend(rows[column])
        index["rejects"].extend({"shard": name, **reject} for reject in summary["rejects"])
    root[INDEX_GROUP].attrs[INDEX_KEY] = index
    root.attrs[ROOT_KEY] = {**root.attrs[ROOT_KEY], "format_version": 1}  # type: ignore[dict-item]


def _filesystem(store: Path) -> tuple[Any, str]:
    from featstore.storage import locate

    return locate(store).filesystem()


def test_a_format_1_store_is_refused_in_one_line_and_migrate_converts_it(store_copy: Path) -> None:
    before = open_store(store_copy)
    expected = [before.record(i) for i in range(len(before))], before.rejects, before.checksums
    downgrade_to_format_1(store_copy)
    for command in ("info", "verify"):
        result = CliRunner().invoke(main, [command, str(store_copy)])
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2 and len(errors) == 1, result.stderr
        assert f"run `featstore migrate {store_copy}`" in errors[0]
    result = CliRunner().invoke(main, ["migrate", str(store_copy)])
    assert result.exit_code == 0 and "converted 3 shard(s)" in result.stdout, result.stderr
    after = open_store(store_copy)
    assert ([after.record(i) for i in range(len(after))], after.rejects, after.checksums) == expected
    assert verify_store(store_copy) == len(before)
    assert "converted 0 shard(s)" in CliRunner().invoke(main, ["migrate", str(store_copy)]).stdout


def test_the_root_list_is_valid_json_in_shard_order_with_a_re_completed_shard_once(store_copy: Path) -> None:
    """The list is joined from entries encoded once each: it must stay the JSON that zarr and
    StoreIndex read, in natural shard order, with a shard completed twice (a redo) listed once."""
    store = locate(store_copy)
    complete = CompleteShards([Reject("gone.webm", "missing_audio", "not in any shard")])
    for shard in ("audio_10", "audio_2", "audio_1", "audio_2"):
        summary = ShardSummary({"size": len(shard)}, f"sha256:{shard}", len(shard), 16_000 * len(shard), ())
        record_completed(store, complete, shard, summary)
    metadata = json.loads((store_copy / INDEX_GROUP / "zarr.json").read_text())
    assert metadata["node_type"] == "group"
    root, _ = open_root(store)
    index = read_index(root)
    assert [entry.name for entry in index.shards] == ["audio_1", "audio_2", "audio_10"]
    assert index == complete.index()
    assert metadata["attributes"][INDEX_KEY] == index.to_json()
    assert index.rejects[0].reason == "missing_audio"
