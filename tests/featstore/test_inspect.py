"""`featstore inspect`: measurements equal librosa's, outliers found, the report renders in Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import dask
import librosa
import numpy as np
import pytest

from featstore import FeatstoreError, open_store
from featstore.audio import decode_clip, normalize, snr_db
from featstore.ingest import IngestSummary
from featstore.inspection import (
    _READERS,
    SILENCE_TOP_DB,
    Inspection,
    _trim_bounds,
    format_inspection,
    inspect_store,
    inspection_summary,
)
from featstore.reader import FeatStore
from featstore.sample import SampleCorpus, encode_webm_opus

from conftest import quiet_ingest
from test_cli import featstore


def librosa_trim(audio: np.ndarray) -> tuple[int, int]:
    _, (first, last) = librosa.effects.trim(audio, top_db=SILENCE_TOP_DB, frame_length=400, hop_length=160)
    return int(first), int(last)


def assert_measured_like_librosa(inspection: Inspection, store: FeatStore) -> None:
    """Every utterance, read on its own through the reader, measures exactly as inspect found."""
    for i in range(len(store)):
        audio = store.audio(i)
        first, last = librosa_trim(audio)
        assert inspection.peak[i] == float(np.abs(audio).max())
        assert inspection.lead_silence[i] == first / 16_000
        assert inspection.trail_silence[i] == (audio.size - last) / 16_000


def test_dask_measurements_equal_direct_ones(ingested: tuple[Path, IngestSummary]) -> None:
    store = open_store(ingested[0])
    with dask.config.set(scheduler="threads"):
        inspection = inspect_store(store)
    assert_measured_like_librosa(inspection, store)
    assert 0.01 < float(np.median(inspection.lead_silence)) < 0.2  # the generator pads 50-150 ms


def test_trim_bounds_equal_librosa_on_edge_cases() -> None:
    rng = np.random.default_rng(0)
    speech = rng.standard_normal(16_000).astype(np.float32)
    signals = [
        np.zeros(5_000, np.float32),  # all silent: librosa keeps everything
        np.zeros(1, np.float32),
        speech[:1],
        speech[:399],  # shorter than one frame
        np.concatenate([np.zeros(8_000), speech, 1e-3 * speech[:4_000]]).astype(np.float32),
        np.concatenate([1e-2 * speech[:3_000], speech, np.zeros(161)]).astype(np.float32),
    ]
    for _ in range(50):  # loudness jumping over 50 dB within a clip puts frames near the threshold
        n = int(rng.integers(1, 100_000))
        signals.append((rng.standard_normal(n) * np.exp(rng.uniform(-6, 1, n))).astype(np.float32))
    for audio in signals:
        assert _trim_bounds(audio) == librosa_trim(audio)


def test_inspect_measures_a_snapshot_while_the_store_grows(corpus: SampleCorpus, tmp_path: Path) -> None:
    quiet_ingest(corpus.split_dir, tmp_path / "s.zarr", shard_selection={2}, workers=1)
    snapshot = open_store(tmp_path / "s.zarr")
    # audio_0 sorts before audio_2: every index the snapshot knows moves in the grown store.
    quiet_ingest(corpus.split_dir, tmp_path / "s.zarr", shard_selection={0}, append=True, workers=1)
    assert len(open_store(tmp_path / "s.zarr")) > len(snapshot)
    with dask.config.set(scheduler="threads"):
        inspection = inspect_store(snapshot)
    assert_measured_like_librosa(inspection, snapshot)


def test_a_reader_kept_from_an_earlier_inspect_of_a_rewritten_store_is_replaced(
    ingested: tuple[Path, IngestSummary],
) -> None:
    store = open_store(ingested[0])
    stale = open_store(ingested[0])
    stale.checksums[store.shard_names[0]] = "sha256:" + "0" * 64  # as if read before an --overwrite re-ingest
    _READERS.stores[store.location.url] = stale  # this thread's reader: the sync scheduler runs tasks here
    with dask.config.set(scheduler="sync"):
        inspection = inspect_store(store)
    assert _READERS.stores[store.location.url] is not stale
    assert_measured_like_librosa(inspection, store)


def test_a_shard_rewritten_during_inspect_is_a_one_line_error(ingested: tuple[Path, IngestSummary]) -> None:
    store = open_store(ingested[0])
    store.checksums[store.shard_names[1]] = "sha256:" + "0" * 64  # as if the shard were redone since
    with dask.config.set(scheduler="threads"), pytest.raises(FeatstoreError, match="changed while it was inspected"):
        inspect_store(store)


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


def test_a_near_silent_clip_is_listed_and_keeps_its_fidelity(corpus: SampleCorpus, tmp_path: Path) -> None:
    """A clip at -84 dBFS: listed by inspect, stored at >= 60 dB SNR against an independent decode."""
    copy = tmp_path / "corpus"
    shutil.copytree(corpus.split_dir, copy)
    shard = next(copy.rglob("audio_1.tar.xz"))
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]
    name, data = members[3]
    audio = decode_clip(data)
    quiet = encode_webm_opus(audio / np.sqrt(np.mean(audio**2)) * 10 ** (-84 / 20), rate=16_000)
    members[3] = (name, quiet)
    with tarfile.open(shard, "w:xz") as tar:
        for member, content in members:
            info = tarfile.TarInfo(member)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    quiet_ingest(copy, tmp_path / "s.zarr", shard_selection={1}, workers=1)
    store = open_store(tmp_path / "s.zarr")
    with dask.config.set(scheduler="threads"):
        summary = inspection_summary(inspect_store(store))
    listed = summary["quiet_utterances"]
    assert [q["audio_filepath"] for q in listed] == [Path(name).name] and listed[0]["level_db"] < -80
    assert any("1 utterances below -60 dBFS" in line for line in format_inspection(summary))
    index = listed[0]["index"]
    assert snr_db(normalize(decode_clip(quiet)), store.audio(index)) >= 60


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
