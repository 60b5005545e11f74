"""Hostile data: damaged shards, xz bombs, non-finite audio, hostile manifests, huge --shards ranges.

Every case is built from the sample generator (real tar.xz shards of real webm/opus clips, or
float WAV clips made with PyAV), goes through a real ingest, and ends either as reject rows with
their reasons or as a failed shard named in the summary; either way `verify` passes afterwards
on what was stored, and no JSON the store wrote holds NaN or Infinity.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from featstore.layout import IngestSettings
from featstore.reader import open_store
from featstore.sample import ENCODE_RATE, SampleCorpus, ToneVoice, encode_webm_opus, synthesize, write_sample_corpus
from featstore.shards import UnreadableShard, iter_members
from featstore.storage import locate
from featstore.verify import verify_store

from conftest import quiet_ingest

CLIPS = 5
MANIFESTS = "sharded_manifests_with_image"


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> SampleCorpus:
    """A corpus without planted defects: each test plants exactly its own."""
    return write_sample_corpus(tmp_path_factory.mktemp("clean"), shards=3, clips_per_shard=CLIPS, seed=5, defects=False)


@pytest.fixture
def split(clean: SampleCorpus, tmp_path: Path) -> Path:
    copy = tmp_path / "train_tarred"
    shutil.copytree(clean.split_dir, copy)
    return copy


def shard_file(split: Path, shard: int, suffix: str = ".tar.xz") -> Path:
    return split / MANIFESTS / "audio_shards" / f"audio_{shard}{suffix}"


def read_members(split: Path, shard: int) -> list[tuple[str, bytes]]:
    with tarfile.open(shard_file(split, shard)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def build_tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def header_offsets(tar: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return [member.offset for member in archive.getmembers()]


def manifest(split: Path, shard: int) -> Path:
    return split / MANIFESTS / f"manifest_{shard}.json"


def records(split: Path, shard: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in manifest(split, shard).read_text().splitlines()]


def write_records(split: Path, shard: int, rows: list[dict[str, Any]]) -> None:
    manifest(split, shard).write_text("".join(json.dumps(row) + "\n" for row in rows))


def float_wav(audio: np.ndarray, rate: int = 16_000) -> bytes:
    """A 32-bit float WAV: PyAV passes its samples through as they are, NaN included."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="wav") as container:
        stream = container.add_stream("pcm_f32le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(audio[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def assert_store_is_sound(store: Path) -> Counter[str]:
    """verify passes, every JSON document is strict JSON, levels are finite; returns reject reasons."""
    verify_store(store)
    for document in store.rglob("zarr.json"):
        strict_json(document.read_text(encoding="utf-8"))
    opened = open_store(store)
    assert np.isfinite(opened.levels_db).all() and np.isfinite(opened.scales).all()
    return Counter(reject["reason"] for reject in opened.rejects)


def featstore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "featstore.cli", *args], capture_output=True, text=True, timeout=300)


def cli_ingest(split: Path, out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return featstore(
        "ingest", str(split), "--out", str(out), "--workers", "1", "--dashboard-address", "127.0.0.1:0",
        "--no-progress", *options,
    )  # fmt: skip


@pytest.mark.slow  # three featstore processes, two of them with a Dask cluster
def test_flipped_header_bit_fails_the_shard_with_its_offset_and_a_rerun_retries(split: Path, tmp_path: Path) -> None:
    members = read_members(split, 1)
    tar = bytearray(build_tar(members))
    damaged = header_offsets(bytes(tar))[2]
    tar[damaged + 10] ^= 0x08  # one bit of the third member's name: its header checksum no longer holds
    shard_file(split, 1).write_bytes(lzma.compress(bytes(tar)))
    out = tmp_path / "s.zarr"

    # The huge range is taken against the shards that exist, never expanded.
    result = cli_ingest(split, out, "--shards", "0-99999999999")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "1 shard(s) failed" in result.stderr
    expected = (
        f"FAILED       audio_1: audio_1.tar.xz: invalid tar header at decompressed tar byte {damaged} (bad checksum)"
    )
    assert expected in result.stdout
    assert "shards       2 ingested, 0 already complete, 1 failed" in result.stdout
    store = open_store(out)
    assert store.shard_names == ["audio_0", "audio_2"] and len(store) == 2 * CLIPS
    assert not any(reject["reason"] == "missing_audio" for reject in store.rejects)  # not mistaken for an end
    assert featstore("verify", str(out)).returncode == 0

    rerun = cli_ingest(split, out, "--shards", "0-99999999999")
    assert rerun.returncode == 2 and expected in rerun.stdout
    assert "shards       0 ingested, 2 already complete, 1 failed" in rerun.stdout

    # The user repairs the shard file (a new size): the failed shard is retried, not refused.
    shard_file(split, 1).write_bytes(lzma.compress(build_tar(members)))
    repaired = cli_ingest(split, out, "--shards", "0-99999999999")
    assert repaired.returncode == 0, repaired.stderr
    assert open_store(out).shard_names == ["audio_0", "audio_1", "audio_2"]
    assert featstore("verify", str(out)).returncode == 0

    beyond = cli_ingest(split, out, "--shards", "7-99999999999")
    assert beyond.returncode == 2 and "error: --shards: no shard in the range 7-99999999999" in beyond.stderr


def _cut_short(tar: bytes) -> tuple[str, bytes]:
    compressed = lzma.compress(tar)
    return ".tar.xz", compressed[: len(compressed) * 2 // 3]


def _corrupt_xz_block(tar: bytes) -> tuple[str, bytes]:
    compressed = bytearray(lzma.compress(tar))
    compressed[len(compressed) // 2] ^= 0x01
    return ".tar.xz", bytes(compressed)


def _gzip_crc_error(tar: bytes) -> tuple[str, bytes]:
    compressed = bytearray(gzip.compress(tar))
    compressed[-6] ^= 0x01  # in the CRC-32 of the trailer: every member reads, the end does not check
    return ".tar.gz", bytes(compressed)


def _data_after_the_end(tar: bytes) -> tuple[str, bytes]:
    return ".tar.xz", lzma.compress(tar + b"\x00" * 1024 + b"not zero padding" + b"\x00" * 496)


DAMAGE: dict[str, tuple[Callable[[bytes], tuple[str, bytes]], str]] = {
    "cut_short": (_cut_short, "(Compressed file ended before the end-of-stream marker was reached)"),
    "corrupt_xz": (_corrupt_xz_block, "(Corrupt input data)"),
    "gzip_crc": (_gzip_crc_error, "(CRC check failed"),
    "data_after_end": (_data_after_the_end, "data after the end of the tar, at decompressed tar byte {end}"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_stream_fails_its_shard_and_the_others_go_on(split: Path, tmp_path: Path, damage: str) -> None:
    make, template = DAMAGE[damage]
    tar = build_tar(read_members(split, 2))
    message = template.format(end=len(tar) + 1024)
    suffix, data = make(tar)
    shard_file(split, 2).unlink()
    shard_file(split, 2, suffix).write_bytes(data)
    out = tmp_path / "s.zarr"
    summary = quiet_ingest(split, out, workers=1)
    assert list(summary.shards_failed) == ["audio_2"]
    reason = summary.shards_failed["audio_2"]
    assert reason.startswith(f"audio_2{suffix}: ") and "decompressed tar byte" in reason and message in reason
    assert sorted(summary.shards_done) == ["audio_0", "audio_1"]
    assert assert_store_is_sound(out) == Counter()
    assert open_store(out).shard_names == ["audio_0", "audio_1"]


def test_a_member_over_the_size_limit_is_skipped_and_the_clips_after_it_are_kept(split: Path, tmp_path: Path) -> None:
    members = read_members(split, 0)
    bomb = 64 * 2**20 + 512  # zeros, just over the default limit: xz stores them in ~10 KB
    shard_file(split, 0).write_bytes(
        lzma.compress(build_tar([members[0], ("bomb.webm", bytes(bomb)), *members[1:]]), preset=0)
    )
    rows = records(split, 0)
    write_records(split, 0, [*rows, {**rows[0], "audio_filepath": "bomb.webm", "duration": 3.0}])
    out = tmp_path / "s.zarr"
    summary = quiet_ingest(split, out, shard_selection={0}, workers=1)
    assert summary.shards_done == ["audio_0"] and summary.clips == CLIPS
    assert assert_store_is_sound(out) == {"member_too_large": 1}
    (reject,) = open_store(out).rejects
    assert reject["audio_filepath"] == "bomb.webm" and reject["detail"] == "larger than --max-member-bytes 67108864"


def test_non_finite_huge_and_endless_audio_are_rejects(split: Path, tmp_path: Path) -> None:
    tone = synthesize("abc abc", ToneVoice(), np.random.default_rng(1), rate=16_000)
    bad = np.arange(tone.size) == tone.size // 2
    clips = {
        "float_ok.wav": tone,
        "float_nan.wav": np.where(bad, np.nan, tone),
        "float_inf.wav": np.where(bad, -np.inf, tone),
        "float_huge.wav": np.where(bad, 1e30, tone),
    }
    members = [(name, float_wav(audio)) for name, audio in clips.items()]
    # 12 s of opus at 6 kbit/s in ~10 KB: such members can decode to GBs, so decoding stops past the limit.
    members.append(("endless.webm", encode_webm_opus(np.zeros(12 * ENCODE_RATE, np.float32), bitrate=6_000)))
    shard_file(split, 1).write_bytes(lzma.compress(build_tar(members)))
    seconds = round(tone.size / 16_000, 3)
    template = records(split, 1)[0]
    write_records(split, 1, [{**template, "audio_filepath": name, "duration": seconds} for name, _ in members])
    out = tmp_path / "s.zarr"
    summary = quiet_ingest(split, out, settings=IngestSettings(max_duration=5.0), shard_selection={1}, workers=1)
    assert summary.clips == 1 and not summary.shards_failed
    assert assert_store_is_sound(out) == {"non_finite_audio": 2, "out_of_range_audio": 1, "too_long": 1}
    details = {r["audio_filepath"]: (r["reason"], r["detail"]) for r in open_store(out).rejects}
    assert details["float_nan.wav"] == ("non_finite_audio", f"1 of {tone.size} samples are NaN or infinite")
    assert details["float_huge.wav"][0] == "out_of_range_audio" and "1e+30" in details["float_huge.wav"][1]
    assert details["endless.webm"][0] == "too_long" and "over 5 s (decoding stopped at 6." in details["endless.webm"][1]
    assert open_store(out).record(0)["audio_filepath"] == "float_ok.wav"


def test_hostile_manifests_become_rejects_for_their_lines_and_records(split: Path, tmp_path: Path) -> None:
    rows = records(split, 0)
    names = [row["audio_filepath"] for row in rows]
    lines = [json.dumps(row) for row in rows]
    lines[1] = json.dumps({**rows[1], "duration": float("nan")})  # Python writes a bare NaN
    lines[2] = json.dumps({**rows[2], "text": "abc \ud800 abc"})  # escaped as \ud800: valid JSON, not text
    lines[3] = json.dumps({**rows[3], "duration": -1.5})
    raw = b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n"  # a byte order mark before the first record
    raw += b'{"audio_filepath": "caf\xe9.webm", "text": "latin-1"}\n'  # line 6: not UTF-8
    manifest(split, 0).write_bytes(raw)
    members = read_members(split, 0)
    shard_file(split, 0).write_bytes(lzma.compress(build_tar([*members, ("\udcff-no-record.webm", members[0][1])])))
    out = tmp_path / "s.zarr"
    summary = quiet_ingest(split, out, shard_selection={0}, workers=1)
    assert not summary.shards_failed and summary.clips == 2
    assert assert_store_is_sound(out) == {"bad_record": 3, "bad_manifest_line": 1, "no_record": 1}
    store = open_store(out)
    assert sorted(store.record(i)["audio_filepath"] for i in range(len(store))) == [names[0], names[4]]  # BOM: kept
    found = {(r["reason"], r["audio_filepath"]): r["detail"] for r in store.rejects}
    assert found["bad_manifest_line", ""] == "manifest_0.json:6: not valid UTF-8 (byte 24: 0xe9)"
    assert found["bad_record", names[1]] == "duration is nan"
    assert found["bad_record", names[2]] == "field 'text' has a lone surrogate (not valid Unicode)"
    assert found["bad_record", names[3]] == "duration is -1.5"
    assert found["no_record", "\\udcff-no-record.webm"] == "tar member listed in no manifest"


def test_damage_at_the_edges_of_a_tar_is_named_with_its_offset(split: Path) -> None:
    """The first header, and a plain tar cut at a member boundary (no end-of-archive blocks)."""
    tar = build_tar(read_members(split, 0))
    first = bytearray(tar)
    first[3] ^= 0x01
    shard_file(split, 0).write_bytes(lzma.compress(bytes(first)))
    with pytest.raises(UnreadableShard, match=r"invalid tar header at decompressed tar byte 0 \(bad checksum\)"):
        list(iter_members(locate(shard_file(split, 0)), max_bytes=2**20))
    boundary = header_offsets(tar)[3]
    shard_file(split, 0).unlink()
    shard_file(split, 0, ".tar").write_bytes(tar[:boundary])
    with pytest.raises(UnreadableShard, match=f"tar ends at decompressed tar byte {boundary} without its end"):
        list(iter_members(locate(shard_file(split, 0, ".tar")), max_bytes=2**20))
