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
from featstore.chunks import array_codec
from featstore.cli import main
from featstore.columns import NUMERIC_COLUMNS, TEXT_CHUNK_BYTES, ColumnReader, TextColumn, write_columns
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
    # held narrower than stored, never so narrow that sample arithmetic wraps
    assert (store.shard_codes.dtype, store.buckets.dtype) == (np.int16, np.int16)
    assert store.offsets.dtype == store.lengths.dtype == np.int32


def downgrade_to_format_1(store: Path) -> None:
    """Rewrite a current store as format 1 (docs/FORMAT.md, "Format 1"): each shard's rows in its
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


def downgrade_to_format_2(store: Path) -> None:
    """Rewrite a current store as format 2 wrote it: each UTF-8 column one bit-shuffled chunk."""
    root = zarr.open_group(str(store), mode="r+")
    reader = ColumnReader(*_filesystem(store))
    for entry in root[INDEX_GROUP].attrs[INDEX_KEY]["shards"]:  # type: ignore[call-overload,index]
        group = root[f"shards/{entry['name']}"]
        for name in ("text", "fields"):
            data, _ = reader.ragged(entry["name"], name, entry["clips"])
            group.create_array(  # type: ignore[union-attr]
                name, data=data, chunks=(max(1, data.size),), compressors=[array_codec()], overwrite=True
            )
            assert len(list((store / "shards" / entry["name"] / name / "c").iterdir())) == 1
    root.attrs[ROOT_KEY] = {**root.attrs[ROOT_KEY], "format_version": 2}  # type: ignore[dict-item]


def test_a_format_2_store_is_refused_and_migrate_rechunks_its_texts(store_copy: Path) -> None:
    before = open_store(store_copy)
    expected = [before.record(i) for i in range(len(before))], before.rejects, before.checksums
    downgrade_to_format_2(store_copy)
    result = CliRunner().invoke(main, ["info", str(store_copy)])
    assert result.exit_code == 2 and f"run `featstore migrate {store_copy}`" in result.stderr
    result = CliRunner().invoke(main, ["migrate", str(store_copy)])
    assert result.exit_code == 0 and "converted 3 shard(s); the store is format 3" in result.stdout, result.stderr
    after = open_store(store_copy)
    assert ([after.record(i) for i in range(len(after))], after.rejects, after.checksums) == expected
    for name in after.shard_names:  # the metadata on disk, as any Zarr v3 reader sees it
        metadata = json.loads((store_copy / "shards" / name / "text" / "zarr.json").read_text())
        assert metadata["chunk_grid"]["configuration"]["chunk_shape"] == [TEXT_CHUNK_BYTES]
        blosc = [codec for codec in metadata["codecs"] if codec["name"] == "blosc"]
        assert [codec["configuration"]["shuffle"] for codec in blosc] == ["noshuffle"]
    assert verify_store(store_copy) == len(before)


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


def test_texts_are_read_from_compressed_chunks_across_chunk_and_shard_boundaries(tmp_path: Path) -> None:
    """Texts longer than a chunk, multi-byte characters cut by a chunk boundary, empty texts and a
    shard without texts all read back exactly, one at a time, in any order, and all at once."""
    rng = np.random.default_rng(3)
    words = ["umwana", "amazi", "ŋoma", "ɓiri", "日本", "🎙️", ""]
    shards = [
        [" ".join(rng.choice(words, rng.integers(0, 40))) for _ in range(900)],
        ["x" * (TEXT_CHUNK_BYTES + 5), "", "ɓ" * TEXT_CHUNK_BYTES, "end"],
        [],
    ]
    root = zarr.open_group(str(tmp_path / "columns"), mode="w")
    reader = ColumnReader(*_filesystem(tmp_path / "columns"))
    chunks, bounds = [], []
    for code, texts in enumerate(shards):
        group = root.create_group(f"shards/s{code}")
        rows: dict[str, list[Any]] = {name: [0] * len(texts) for name in NUMERIC_COLUMNS}
        write_columns(group, {**rows, "text": texts, "fields": [{} for _ in texts]})
        offsets = reader.numeric_offsets(f"s{code}", "text", len(texts))
        chunks.append(reader.compressed_chunks(f"s{code}", "text", int(offsets[-1])))
        bounds.append(offsets)
    assert len(chunks[0]) > 3 and len(chunks[1]) > 3  # several chunks: boundaries are crossed
    codes = np.repeat(np.arange(3, dtype=np.int16), [len(texts) for texts in shards])
    column = TextColumn(codes, np.concatenate(bounds).astype(np.int32), chunks, reader.decode)
    expected = [text for texts in shards for text in texts]
    assert len(column) == len(expected)
    for i in rng.permutation(len(expected)):
        assert column[int(i)] == expected[i]
    assert list(column) == expected and column == expected and column[-1] == "end"
    with pytest.raises(IndexError):
        column[len(expected)]
