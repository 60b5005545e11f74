"""Remote storage through fsspec: shards streamed over HTTP on loopback, stores at file:// and memory:// URLs."""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import numpy as np
import pytest

from featstore import open_store, storage
from featstore.ingest import IngestSummary
from featstore.sample import SampleCorpus
from featstore.verify import verify_store

from conftest import quiet_ingest
from test_ingest import store_content


class CountingHandler(SimpleHTTPRequestHandler):
    """Serves a folder and counts the bytes it sends per path."""

    sent: Counter[str] = Counter()

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        data = source.read()
        type(self).sent[self.path] += len(data)
        outputfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_root(corpus: SampleCorpus) -> Iterator[str]:
    CountingHandler.sent = Counter()
    handler = functools.partial(CountingHandler, directory=str(corpus.split_dir.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{corpus.split_dir.name}/"
    finally:
        server.shutdown()
        server.server_close()


def test_ingest_streams_shards_over_http_into_the_same_store(
    http_root: str, corpus: SampleCorpus, ingested: tuple[Path, IngestSummary], tmp_path: Path
) -> None:
    summary = quiet_ingest(http_root, f"file://{tmp_path / 'http.zarr'}")
    assert sorted(summary.shards_done) == ["audio_0", "audio_1", "audio_2"]
    assert store_content(tmp_path / "http.zarr")["index"] == store_content(ingested[0])["index"]
    for shard in (corpus.split_dir / "sharded_manifests_with_image" / "audio_shards").iterdir():
        served = sum(n for path, n in CountingHandler.sent.items() if path.endswith(shard.name))
        assert 0 < served <= shard.stat().st_size * 1.05, "each shard is read once, front to back"


def test_http_files_stream_from_servers_without_range_requests(
    http_root: str, corpus: SampleCorpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "STREAM_BLOCK_BYTES", 4096)  # many blocks per shard, were they ranged
    shard = next((corpus.split_dir / "sharded_manifests_with_image" / "audio_shards").iterdir())
    location = storage.locate(f"{http_root}sharded_manifests_with_image/audio_shards/{shard.name}")
    with location.open() as stream:
        pieces = iter(lambda: stream.read(10_000), b"")  # small sequential reads, as tarfile makes
        assert b"".join(pieces) == shard.read_bytes()
    manifest = corpus.split_dir / "sharded_manifests_with_image" / "manifest_0.json"
    with storage.locate(f"{http_root}sharded_manifests_with_image/manifest_0.json").open("r") as text:
        assert text.read() == manifest.read_text(encoding="utf-8")


def test_a_store_at_a_file_url_reads_and_verifies(ingested: tuple[Path, IngestSummary]) -> None:
    url = f"file://{ingested[0]}"
    store = open_store(url)
    assert len(store) == 29
    assert verify_store(url) == 29


def test_a_store_on_an_fsspec_memory_filesystem_reads_like_the_local_one(ingested: tuple[Path, IngestSummary]) -> None:
    memory = fsspec.filesystem("memory")
    memory.put(str(ingested[0]), "/copied.zarr", recursive=True)
    local, remote = open_store(ingested[0]), open_store("memory://copied.zarr")
    assert remote.texts == local.texts
    for i in range(len(local)):
        np.testing.assert_array_equal(remote.audio(i), local.audio(i))
