"""`featstore inspect`: dask measurements equal direct ones, outliers found, report renders in Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dask
import librosa
import numpy as np
import pytest

from featstore import open_store
from featstore.ingest import IngestSummary
from featstore.inspection import SILENCE_TOP_DB, inspect_store
from featstore.sample import SampleCorpus

from conftest import quiet_ingest
from test_cli import featstore


def test_dask_measurements_equal_direct_ones(ingested: tuple[Path, IngestSummary]) -> None:
    store = open_store(ingested[0])
    with dask.config.set(scheduler="threads"):
        inspection = inspect_store(store)
    for i in range(len(store)):
        audio = store.audio(i)
        _, (first, last) = librosa.effects.trim(audio, top_db=SILENCE_TOP_DB, frame_length=400, hop_length=160)
        assert inspection.peak[i] == pytest.approx(np.abs(audio).max(), rel=1e-6)
        assert inspection.lead_silence[i] == pytest.approx(first / 16_000)
        assert inspection.trail_silence[i] == pytest.approx((audio.size - last) / 16_000)
    assert 0.01 < float(np.median(inspection.lead_silence)) < 0.2  # the generator pads 50-150 ms


def test_a_mislabelled_clip_is_a_speaking_rate_outlier(corpus: SampleCorpus, tmp_path: Path) -> None:
    copy = tmp_path / "corpus"
    shutil.copytree(corpus.split_dir, copy)
    manifest = copy / "sharded_manifests_with_image" / "manifest_1.json"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    records[4]["text"] = " ".join([records[4]["text"]] * 4)  # a transcript far longer than its audio
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    quiet_ingest(copy, tmp_path / "s.zarr", shard_selection={1}, workers=1)
    with dask.config.set(scheduler="threads"):
        inspection = inspect_store(open_store(tmp_path / "s.zarr"))
    worst = inspection.outliers[0]  # listed most extreme first
    assert worst["audio_filepath"] == records[4]["audio_filepath"]
    assert worst["z"] > 2 * max([abs(o["z"]) for o in inspection.outliers[1:]] + [0])


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("CI needs Debian's chromium package (scripts/test installs it)")
    pytest.skip("chromium is not installed")


def test_cli_writes_json_plots_and_a_report_that_renders_in_chromium(
    ingested: tuple[Path, IngestSummary], tmp_path: Path
) -> None:
    result = featstore(
        "inspect",
        str(ingested[0]),
        "--json",
        "--workers",
        "2",
        "--dashboard-address",
        "127.0.0.1:0",
        "--report",
        str(tmp_path / "report.html"),
        "--plots",
        str(tmp_path / "plots"),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["utterances"] == 29 and sum(s["utterances"] for s in summary["shards"].values()) == 29
    assert "Dask dashboard: http://127.0.0.1:" in result.stderr
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "durations.png",
        "levels.png",
        "shards.png",
        "speaking_rate.png",
    ]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in (tmp_path / "plots").iterdir())
    dom = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--dump-dom",
            (tmp_path / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "4 of 4 plots rendered" in dom
    assert re.search(r'<h2 id="characters">Characters</h2><table>', dom)


@pytest.mark.slow
def test_keep_dashboard_serves_until_interrupted(ingested: tuple[Path, IngestSummary]) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "featstore.cli",
            "inspect",
            str(ingested[0]),
            "--workers",
            "1",
            "--dashboard-address",
            "127.0.0.1:0",
            "--keep-dashboard",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        link = ""
        deadline = time.monotonic() + 120
        while not link and time.monotonic() < deadline:
            match = re.search(r"Dask dashboard: (\S+)", process.stdout.readline())
            link = match.group(1) if match else ""
        while "press Ctrl-C" not in process.stderr.readline() and time.monotonic() < deadline:
            pass
        with urllib.request.urlopen(link, timeout=30) as response:
            assert response.status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
