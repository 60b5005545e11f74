"""End-to-end ingest on a real LocalCluster: content, rejects, resume, kill -9, append, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import zarr
from transformers import Wav2Vec2FeatureExtractor

from featstore import open_store
from featstore.audio import decode_clip, snr_db
from featstore.errors import FeatstoreError
from featstore.index import CompleteShards, consolidate_index
from featstore.ingest import IngestSummary, scan_manifests
from featstore.layout import INDEX_GROUP, INDEX_KEY, ROOT_KEY, IngestSettings, open_root
from featstore.sample import SampleCorpus, write_sample_corpus
from featstore.shardmeta import SHARD_KEY
from featstore.sources import discover
from featstore.storage import locate

from conftest import quiet_ingest

REJECTED = {"undecodable", "truncated", "missing_audio", "no_record", "empty_text", "null_text", "too_short"}


def store_content(path: Path) -> dict[str, Any]:
    """Everything a reader can see: the consolidated index and every audio array's samples."""
    root = zarr.open_group(str(path), mode="r")
    content: dict[str, Any] = {"index": root[INDEX_GROUP].attrs[INDEX_KEY]}
    for shard_name, shard in sorted(root["shards"].groups()):
        content[shard_name] = {"attrs": shard.attrs[SHARD_KEY]}
        for name, array in sorted(shard.arrays()):
            content[shard_name][name] = array[:].tobytes()
    return content


def test_every_clip_is_stored_or_rejected(ingested: tuple[Path, IngestSummary], corpus: SampleCorpus) -> None:
    _, summary = ingested
    assert summary.shards_done and not summary.shards_failed
    assert summary.clips == corpus.clips - len(REJECTED) - 0  # bad_json and outside_alphabet clips are kept
    assert summary.rejects == {
        "bad_manifest_line": 1,
        "empty_text": 2,
        "missing_audio": 1,
        "no_record": 1,
        "too_short": 1,
        "truncated": 1,
        "undecodable": 1,
    }


@pytest.mark.parametrize("defect", sorted(REJECTED))
def test_each_defect_is_a_reject_row_with_its_reason(
    defect: str, ingested: tuple[Path, IngestSummary], corpus: SampleCorpus
) -> None:
    store = open_store(ingested[0])
    reason = "empty_text" if defect == "null_text" else defect
    rows = [r for r in store.rejects if r["audio_filepath"] == corpus.defects[defect]]
    assert [r["reason"] for r in rows] == [reason]
    assert rows[0]["detail"]
    assert corpus.defects[defect] not in {store.record(i)["audio_filepath"] for i in range(len(store))}


def test_bad_manifest_line_is_a_reject_with_its_location(ingested: tuple[Path, IngestSummary]) -> None:
    rows = [r for r in open_store(ingested[0]).rejects if r["reason"] == "bad_manifest_line"]
    assert len(rows) == 1 and rows[0]["detail"].startswith("manifest_0.json:")


def test_text_outside_the_alphabet_is_kept(ingested: tuple[Path, IngestSummary], corpus: SampleCorpus) -> None:
    store = open_store(ingested[0])
    texts = {store.record(i)["audio_filepath"]: store.texts[i] for i in range(len(store))}
    assert texts[corpus.defects["outside_alphabet"]].endswith("42é")


def test_every_manifest_field_is_kept(ingested: tuple[Path, IngestSummary], corpus: SampleCorpus) -> None:
    store = open_store(ingested[0])
    record = store.record(len(store) - 1)
    for field in (
        "raw_text",
        "text",
        "duration",
        "LUFS",
        "gender",
        "age_group",
        "location",
        "image_category",
        "image_sub_category",
        "audio_filepath",
        "image_filepath",
        "shard_id",
        "image_shard_id",
        "creator_id",
    ):
        assert field in record
    assert record["shard"] == "audio_2" and record["shard_id"] == 2


def test_stored_audio_matches_the_feature_extractor_within_60_db(
    ingested: tuple[Path, IngestSummary], corpus: SampleCorpus
) -> None:
    store = open_store(ingested[0])
    by_name = {store.record(i)["audio_filepath"]: i for i in range(len(store))}
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True)
    tar_path = corpus.split_dir / "sharded_manifests_with_image" / "audio_shards" / "audio_1.tar.xz"
    compared = 0
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            expected = extractor(decode_clip(data), sampling_rate=16_000).input_values[0]
            stored = store[by_name[member.name]].audio
            assert stored.shape == expected.shape
            assert snr_db(expected, stored) >= 60
            compared += 1
    assert compared == 12


def test_rerun_skips_completed_shards_and_changes_nothing(corpus: SampleCorpus, store_copy: Path) -> None:
    before = store_content(store_copy)
    summary = quiet_ingest(corpus.split_dir, store_copy)
    assert summary.shards_done == [] and summary.shards_skipped == ["audio_0", "audio_1", "audio_2"]
    assert store_content(store_copy) == before


def test_unfinished_shard_is_redone_from_scratch(corpus: SampleCorpus, store_copy: Path) -> None:
    before = store_content(store_copy)
    root, _ = open_root(locate(store_copy), mode="r+")
    half_written = root["shards"]["audio_1"]
    half_written.attrs[SHARD_KEY] = {"status": "writing", "source": {}}
    _, first_array = next(iter(half_written.arrays()))
    first_array[:100] = 7  # garbage that a redo must not keep
    summary = quiet_ingest(corpus.split_dir, store_copy)
    assert summary.shards_done == ["audio_1"]
    assert store_content(store_copy) == before


@pytest.mark.slow
@pytest.mark.parametrize("kill_when", ["store_exists", "first_shard_complete"])
def test_kill_9_then_rerun_gives_the_uninterrupted_store(kill_when: str, tmp_path: Path) -> None:
    corpus = write_sample_corpus(tmp_path / "corpus", shards=4, clips_per_shard=10, seed=3, defects=False)
    reference = tmp_path / "reference.zarr"
    quiet_ingest(corpus.split_dir, reference, workers=1)
    out = tmp_path / "killed.zarr"
    command = [
        sys.executable,
        "-m",
        "featstore.cli",
        "ingest",
        str(corpus.split_dir),
        "--out",
        str(out),
        "--workers",
        "1",
        "--no-progress",
        "--dashboard-address",
        "127.0.0.1:0",
    ]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not _reached(out, kill_when):
        time.sleep(0.02)
    assert process.poll() is None, "ingest finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    summary = quiet_ingest(corpus.split_dir, out, workers=1)
    assert summary.shards_done  # something was left to redo
    assert store_content(out) == store_content(reference)


def _reached(out: Path, kill_when: str) -> bool:
    if kill_when == "store_exists":
        return (out / "shards").exists()
    try:
        return bool(zarr.open_group(str(out), mode="r")[INDEX_GROUP].attrs[INDEX_KEY]["shards"])
    except (FileNotFoundError, KeyError, ValueError):
        return False


def test_a_store_from_other_sources_is_refused_without_append(tmp_path: Path, store_copy: Path) -> None:
    other = write_sample_corpus(tmp_path / "other", shards=1, clips_per_shard=3, seed=9, defects=False, split="val")
    with pytest.raises(FeatstoreError, match="different file|other sources"):
        quiet_ingest(other.split_dir, store_copy)


def test_append_adds_new_shards_and_keeps_the_old(corpus: SampleCorpus, tmp_path: Path) -> None:
    out = tmp_path / "appended.zarr"
    quiet_ingest(corpus.split_dir, out, shard_selection={1}, workers=1)
    assert len(open_store(out)) == 12
    with pytest.raises(FeatstoreError, match="--append"):
        quiet_ingest(corpus.split_dir, out, shard_selection={2}, workers=1)
    summary = quiet_ingest(corpus.split_dir, out, shard_selection={2}, append=True, workers=1)
    assert summary.shards_done == ["audio_2"] and summary.shards_skipped == []
    assert open_store(out).shard_names == ["audio_1", "audio_2"]


def test_overwrite_replaces_the_store(corpus: SampleCorpus, tmp_path: Path) -> None:
    out = tmp_path / "over.zarr"
    quiet_ingest(corpus.split_dir, out, max_shards=1, workers=1)
    quiet_ingest(corpus.split_dir, out, shard_selection={2}, overwrite=True, workers=1)
    assert open_store(out).shard_names == ["audio_2"]


def test_changed_settings_are_refused(corpus: SampleCorpus, store_copy: Path) -> None:
    with pytest.raises(FeatstoreError, match="min_duration"):
        quiet_ingest(corpus.split_dir, store_copy, settings=IngestSettings(min_duration=1.0))


def _shard_tar(split_dir: Path, shard: int) -> Path:
    return split_dir / "sharded_manifests_with_image" / "audio_shards" / f"audio_{shard}.tar.xz"


def test_clips_over_max_duration_are_rejected(
    ingested: tuple[Path, IngestSummary], corpus: SampleCorpus, tmp_path: Path
) -> None:
    reference = open_store(ingested[0])
    longer = sum(
        1 for i in range(len(reference)) if reference.record(i)["shard"] == "audio_1" and reference.durations[i] > 2.0
    )
    assert longer >= 1
    summary = quiet_ingest(
        corpus.split_dir, tmp_path / "s.zarr", settings=IngestSettings(max_duration=2.0), shard_selection={1}, workers=1
    )
    assert summary.rejects == {"too_long": longer, "bad_manifest_line": 1}  # manifests are read whole
    assert all(d <= 2.0 for d in open_store(tmp_path / "s.zarr").durations)


def test_members_over_the_size_limit_are_rejected_unread(corpus: SampleCorpus, tmp_path: Path) -> None:
    with tarfile.open(_shard_tar(corpus.split_dir, 1)) as tar:
        sizes = sorted(member.size for member in tar.getmembers())
    limit = sizes[len(sizes) // 2]
    summary = quiet_ingest(
        corpus.split_dir,
        tmp_path / "s.zarr",
        settings=IngestSettings(max_member_bytes=limit),
        shard_selection={1},
        workers=1,
    )
    assert summary.rejects == {"member_too_large": sum(size > limit for size in sizes), "bad_manifest_line": 1}
    rows = open_store(tmp_path / "s.zarr").rejects
    assert all(
        r["detail"] == f"larger than --max-member-bytes {limit}" for r in rows if r["reason"] == "member_too_large"
    )


def test_keep_empty_text_keeps_empty_and_null_text(corpus: SampleCorpus, tmp_path: Path) -> None:
    summary = quiet_ingest(
        corpus.split_dir,
        tmp_path / "s.zarr",
        settings=IngestSettings(keep_empty_text=True),
        shard_selection={0},
        workers=1,
    )
    assert "empty_text" not in summary.rejects
    store = open_store(tmp_path / "s.zarr")
    kept = {store.record(i)["audio_filepath"]: store.texts[i] for i in range(len(store))}
    assert kept[corpus.defects["empty_text"]] == "" and kept[corpus.defects["null_text"]] == ""


def test_a_record_listed_twice_is_a_duplicate_reject(corpus: SampleCorpus, tmp_path: Path) -> None:
    copy = tmp_path / "dup"
    shutil.copytree(corpus.split_dir, copy)
    manifest = copy / "sharded_manifests_with_image" / "manifest_1.json"
    first_line = manifest.read_text().splitlines()[0]
    manifest.write_text(manifest.read_text() + first_line + "\n")
    summary = quiet_ingest(copy, tmp_path / "s.zarr", shard_selection={1}, workers=1)
    assert summary.rejects == {"duplicate_record": 1, "bad_manifest_line": 1}  # bad line: shard 0's manifest
    store = open_store(tmp_path / "s.zarr")
    assert len(store) == 12
    duplicates = [reject for reject in store.rejects if reject["reason"] == "duplicate_record"]
    assert [(reject["shard"], reject["audio_filepath"]) for reject in duplicates] == [
        ("audio_1", json.loads(first_line)["audio_filepath"])
    ]  # found by the shard's own task, which keeps the first record


def test_each_shard_task_reads_only_the_manifests_holding_its_records(corpus: SampleCorpus, tmp_path: Path) -> None:
    """A record of shard 1 moved into shard 0's manifest, and a second copy of another in shard 2's."""
    copy = tmp_path / "moved"
    shutil.copytree(corpus.split_dir, copy)
    manifests = copy / "sharded_manifests_with_image"
    lines = (manifests / "manifest_1.json").read_text().splitlines()
    moved, copied = json.loads(lines[0]), json.loads(lines[1])
    (manifests / "manifest_1.json").write_text("".join(line + "\n" for line in lines[1:]))
    with (manifests / "manifest_0.json").open("a") as f:
        f.write(json.dumps({**moved, "shard_id": 1}) + "\n")
    with (manifests / "manifest_2.json").open("a") as f:
        f.write(json.dumps({**copied, "shard_id": 1}) + "\n")
    found = discover(locate(copy))
    scan = scan_manifests(found, found.shards)
    assert [m.name for m in scan.manifests_of(1, found.manifests)] == [
        "manifest_0.json",
        "manifest_1.json",
        "manifest_2.json",
    ]
    assert [m.name for m in scan.manifests_of(2, found.manifests)] == ["manifest_2.json"]
    summary = quiet_ingest(copy, tmp_path / "s.zarr", shard_selection={1}, workers=1)
    assert summary.rejects == {"duplicate_record": 1, "bad_manifest_line": 1}
    store = open_store(tmp_path / "s.zarr")
    stored = {store.record(i)["audio_filepath"] for i in range(len(store))}
    assert moved["audio_filepath"] in stored and copied["audio_filepath"] in stored
    assert len(store) == 12  # shard 1 whole
    duplicates = [r for r in store.rejects if r["reason"] == "duplicate_record"]
    assert [(r["audio_filepath"], r["detail"].split(":")[0]) for r in duplicates] == [
        (copied["audio_filepath"], "manifest_2.json")
    ]


def test_an_unreadable_shard_fails_alone(corpus: SampleCorpus, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(corpus.split_dir, broken)
    shard = broken / "sharded_manifests_with_image" / "audio_shards" / "audio_2.tar.xz"
    shard.write_bytes(shard.read_bytes()[:2000])
    summary = quiet_ingest(broken, tmp_path / "partial.zarr")
    assert list(summary.shards_failed) == ["audio_2"]
    assert "unreadable tar" in summary.shards_failed["audio_2"]
    assert open_store(tmp_path / "partial.zarr").shard_names == ["audio_0", "audio_1"]


def test_reader_sees_completed_shards_only(store_copy: Path) -> None:
    root, _ = open_root(locate(store_copy), mode="r+")
    root["shards"]["audio_1"].attrs[SHARD_KEY] = {"status": "writing", "source": {}}
    index = consolidate_index(locate(store_copy), root, CompleteShards([]))
    store = open_store(store_copy)
    assert store.shard_names == ["audio_0", "audio_2"] == [entry.name for entry in index.shards]
    assert len(store) == 5 + 12


def test_not_a_store_and_newer_format_are_refused(tmp_path: Path, store_copy: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(FeatstoreError, match="not a featstore store"):
        open_store(tmp_path / "plain")
    root = zarr.open_group(str(store_copy), mode="r+")
    root.attrs[ROOT_KEY] = {**root.attrs[ROOT_KEY], "format_version": 99}
    with pytest.raises(FeatstoreError, match="format version 99"):
        open_store(store_copy)
