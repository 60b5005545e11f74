"""The featstore command as users run it: real processes, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from featstore.ingest import IngestSummary
from featstore.sample import SampleCorpus


def featstore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "featstore.cli", *args], capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess[str], match: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and match in errors[0], result.stderr


def test_info_prints_counts_rejects_and_characters(ingested: tuple[Path, IngestSummary]) -> None:
    result = featstore("info", str(ingested[0]))
    assert result.returncode == 0, result.stderr
    assert "utterances     29" in result.stdout
    assert "outside the alphabet: 2 4 é" in result.stdout
    assert "truncated 1" in result.stdout


def test_info_json_is_one_object(ingested: tuple[Path, IngestSummary]) -> None:
    summary = json.loads(featstore("info", str(ingested[0]), "--json").stdout)
    assert summary["utterances"] == 29
    assert summary["rejects"]["undecodable"] == 1
    assert summary["characters"]["é"] == {"count": 1, "in_alphabet": False}
    assert set(summary["shards"]) == {"audio_0", "audio_1", "audio_2"}


def test_sample_then_ingest_end_to_end(tmp_path: Path) -> None:
    assert featstore("sample", str(tmp_path), "--shards", "2", "--clips", "4", "--no-defects").returncode == 0
    result = featstore(
        "ingest",
        str(tmp_path / "train_tarred"),
        "--out",
        str(tmp_path / "f.zarr"),
        "--workers",
        "1",
        "--dashboard-address",
        "127.0.0.1:0",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "Dask dashboard: http://127.0.0.1:" in result.stdout
    assert "clips        8" in result.stdout
    assert "compression" in result.stdout and "wall time" in result.stdout


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["ingest", "/nonexistent/split", "--out", "x.zarr"], "no such file"),
        (["ingest", ".", "--out", "x.zarr", "--min-duration", "5", "--max-duration", "1"], "--min-duration"),
        (["info", "/nonexistent.zarr"], "no such store"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], match: str) -> None:
    assert_one_line_error(featstore(*args), match)


def test_empty_directory_and_non_store_output(tmp_path: Path, corpus: SampleCorpus) -> None:
    assert_one_line_error(featstore("ingest", str(tmp_path), "--out", str(tmp_path / "x.zarr")), "no tar shards")
    (tmp_path / "notastore").mkdir()
    (tmp_path / "notastore" / "keep.txt").write_text("precious")
    result = featstore("ingest", str(corpus.split_dir), "--out", str(tmp_path / "notastore"))
    assert_one_line_error(result, "not a featstore store")
    assert (tmp_path / "notastore" / "keep.txt").read_text() == "precious"


def test_unreadable_shard_exits_non_zero_and_keeps_the_rest(corpus: SampleCorpus, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(corpus.split_dir, broken)
    shard = broken / "sharded_manifests_with_image" / "audio_shards" / "audio_1.tar.xz"
    shard.write_bytes(shard.read_bytes()[:1500])
    result = featstore(
        "ingest",
        str(broken),
        "--out",
        str(tmp_path / "p.zarr"),
        "--workers",
        "1",
        "--dashboard-address",
        "127.0.0.1:0",
        "--no-progress",
    )
    assert_one_line_error(result, "1 shard(s) failed")
    assert "FAILED       audio_1: audio_1.tar.xz: unreadable tar" in result.stdout
    info = json.loads(featstore("info", str(tmp_path / "p.zarr"), "--json").stdout)
    assert set(info["shards"]) == {"audio_0", "audio_2"}


def test_a_store_with_no_audio_reports_no_ratios(tmp_path: Path) -> None:
    """Every clip rejected: the summary and `info` say there is no audio, not '0.00x' or '10693000.0 MB per hour'."""
    assert featstore("sample", str(tmp_path), "--shards", "1", "--clips", "3", "--no-defects").returncode == 0
    out = str(tmp_path / "f.zarr")
    ingest = ["--workers", "1", "--dashboard-address", "127.0.0.1:0", "--no-progress", "--min-duration", "29"]
    result = featstore("ingest", str(tmp_path / "train_tarred"), "--out", out, *ingest)
    assert result.returncode == 0, result.stderr
    assert "clips        0" in result.stdout and "(no audio)" in result.stdout
    assert "(no audio)" in featstore("info", out).stdout
    assert json.loads(featstore("info", out, "--json").stdout)["bytes_per_audio_hour"] is None


def test_output_into_a_closed_pipe_ends_quietly(ingested: tuple[Path, IngestSummary]) -> None:
    """`featstore info STORE | head -1`: no `error:` line and no traceback when the reader has gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "featstore.cli", "info", str(ingested[0])],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 1 and result.stderr == ""
