"""Ingest on an existing Dask cluster: a real `dask scheduler` and two `dask worker` processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from featstore import open_store
from featstore.sample import SampleCorpus

from conftest import quiet_ingest
from test_ingest import store_content


@pytest.fixture
def scheduler_address(tmp_path: Path) -> Iterator[str]:
    scheduler_file = tmp_path / "scheduler.json"
    common = {"start_new_session": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                "127.0.0.1:0",
                "--scheduler-file",
                str(scheduler_file),
            ],
            **common,
        )
    ]  # type: ignore[call-overload]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(2):
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "distributed.cli.dask_worker",
                        address,
                        "--nthreads",
                        "1",
                        "--host",
                        "127.0.0.1",
                        "--no-dashboard",
                    ],
                    **common,
                )
            )  # type: ignore[call-overload]
        _wait_for_workers(address, 2)
        yield address
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)


def _wait_for_workers(address: str, count: int) -> None:
    from distributed import Client

    with Client(address, timeout=30) as client:
        client.wait_for_workers(count, timeout=60)


def test_ingest_on_an_existing_cluster_matches_a_local_one(
    scheduler_address: str, corpus: SampleCorpus, ingested: tuple[Path, object], tmp_path: Path
) -> None:
    out = tmp_path / "remote.zarr"
    summary = quiet_ingest(corpus.split_dir, out, scheduler=scheduler_address)
    assert sorted(summary.shards_done) == ["audio_0", "audio_1", "audio_2"]
    assert len(open_store(out)) == 29
    assert store_content(out)["index"] == store_content(ingested[0])["index"]
