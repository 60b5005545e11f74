"""Finding shards and manifests, choosing shards, and reading tar streams."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from featstore.errors import FeatstoreError
from featstore.sample import SampleCorpus
from featstore.shards import UnreadableShard, iter_members
from featstore.sources import discover, iter_manifest_lines, parse_shard_selection, records_for_shard, select_shards
from featstore.storage import locate


def write_tar(path: Path, members: dict[str, bytes], mode: str) -> None:
    with tarfile.open(path, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_discovers_the_real_layout(corpus: SampleCorpus) -> None:
    found = discover(locate(corpus.split_dir))
    assert [s.shard_id for s in found.shards] == [0, 1, 2]
    assert [s.name for s in found.shards] == ["audio_0", "audio_1", "audio_2"]
    assert [m.name for m in found.manifests] == ["manifest_0.json", "manifest_1.json", "manifest_2.json"]


def test_discovers_plain_and_gzip_tars_at_any_depth(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    write_tar(tmp_path / "a" / "b" / "part_4.tar", {"x.wav": b"1"}, "w")
    write_tar(tmp_path / "a" / "part_10.tar.gz", {"y.wav": b"2"}, "w:gz")
    (tmp_path / "a" / "manifest.json").write_text('{"audio_filepath": "x.wav", "shard_id": 4}\n')
    found = discover(locate(tmp_path))
    assert [(s.shard_id, s.name) for s in found.shards] == [(4, "part_4"), (10, "part_10")]


def test_image_shards_are_not_audio(corpus: SampleCorpus, tmp_path: Path) -> None:
    images = corpus.split_dir / "sharded_manifests_with_image" / "image_shards"
    images.mkdir(exist_ok=True)
    write_tar(images / "image_0.tar.xz", {"image.jpg": b"jpg"}, "w:xz")
    try:
        assert len(discover(locate(corpus.split_dir)).shards) == 3
    finally:
        (images / "image_0.tar.xz").unlink()
        images.rmdir()


@pytest.mark.parametrize(("text", "expected"), [("0,3,5-9", {0, 3, 5, 6, 7, 8, 9}), ("2", {2}), (" 1 , 4-4 ", {1, 4})])
def test_parses_shard_selections(text: str, expected: set[int]) -> None:
    selection = parse_shard_selection(text)
    assert {shard_id for shard_id in range(20) if shard_id in selection} == expected


@pytest.mark.parametrize("text", ["a", "3-1", "1-2-3"])
def test_rejects_malformed_selections(text: str) -> None:
    with pytest.raises(FeatstoreError):
        parse_shard_selection(text)


def test_selects_by_number_and_by_count(corpus: SampleCorpus) -> None:
    found = discover(locate(corpus.split_dir))
    assert [s.shard_id for s in select_shards(found, {0, 2}, None)] == [0, 2]
    assert [s.shard_id for s in select_shards(found, None, 2)] == [0, 1]
    with pytest.raises(FeatstoreError, match="no shard numbered 7"):
        select_shards(found, {7}, None)
    assert [s.shard_id for s in select_shards(found, parse_shard_selection("1-99999999999"), None)] == [1, 2]
    with pytest.raises(FeatstoreError, match="no shard in the range 5-99999999999"):
        select_shards(found, parse_shard_selection("0,5-99999999999"), None)


def test_missing_input_and_empty_directory_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(FeatstoreError, match="no such file"):
        discover(locate(tmp_path / "nope"))
    with pytest.raises(FeatstoreError, match="no tar shards"):
        discover(locate(tmp_path))


def test_records_are_routed_by_shard_id_across_manifests(tmp_path: Path) -> None:
    (tmp_path / "manifest_0.json").write_text(
        '{"audio_filepath": "a.webm", "shard_id": 1}\n{"audio_filepath": "dir/b.webm", "shard_id": 0}\nnot json\n'
    )
    (tmp_path / "manifest_1.json").write_text('{"audio_filepath": "c.webm"}\n')
    manifests = (locate(tmp_path / "manifest_0.json"), locate(tmp_path / "manifest_1.json"))
    assert set(records_for_shard(manifests, 1)[0]) == {"a.webm", "c.webm"}  # c.webm: shard from its manifest's number
    assert set(records_for_shard(manifests, 0)[0]) == {"b.webm"}
    errors = [line for line in iter_manifest_lines(manifests) if line.record is None]
    assert [(e.source, e.error.split(" (")[0]) for e in errors] == [("manifest_0.json:3", "not valid JSON")]


def test_streams_members_and_skips_oversized_ones_unread(tmp_path: Path) -> None:
    write_tar(tmp_path / "s_0.tar.xz", {"small.webm": b"a" * 10, "big.webm": b"b" * 5000}, "w:xz")
    members = list(iter_members(locate(tmp_path / "s_0.tar.xz"), max_bytes=100))
    assert [(m.name, m.size, m.data) for m in members] == [("small.webm", 10, b"a" * 10), ("big.webm", 5000, None)]


def test_a_corrupt_tar_raises_unreadable_shard(tmp_path: Path) -> None:
    write_tar(tmp_path / "s_0.tar.xz", {f"{i}.webm": bytes(range(256)) * 40 for i in range(5)}, "w:xz")
    data = (tmp_path / "s_0.tar.xz").read_bytes()
    (tmp_path / "s_0.tar.xz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableShard, match="unreadable tar"):
        list(iter_members(locate(tmp_path / "s_0.tar.xz"), max_bytes=10**6))


def test_a_clip_listed_twice_keeps_its_first_record_and_returns_the_others(tmp_path: Path) -> None:
    (tmp_path / "manifest_0.json").write_text(
        '{"audio_filepath": "a.webm", "text": "one"}\n{"audio_filepath": "x/a.webm", "text": "two"}\n'
        '{"audio_filepath": "b.webm", "text": "three"}\n{"audio_filepath": "a.webm", "text": "four"}\n'
    )
    records, duplicates = records_for_shard((locate(tmp_path / "manifest_0.json"),), 0)
    assert {key: record["text"] for key, (_, record) in records.items()} == {"a.webm": "one", "b.webm": "three"}
    assert [(source, record["text"]) for source, record in duplicates] == [
        ("manifest_0.json:2", "two"),
        ("manifest_0.json:4", "four"),
    ]
