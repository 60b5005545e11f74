"""Shared, real test data: a generated corpus with every defect, and the store ingested from it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from featstore.ingest import IngestSummary, ingest
from featstore.sample import SampleCorpus, write_sample_corpus


def quiet_ingest(input_dir: Path, out: Path, **options: object) -> IngestSummary:
    """Ingest on a real LocalCluster on loopback, without progress output."""
    options.setdefault("workers", 2)
    return ingest(input_dir, out, dashboard_address="127.0.0.1:0", show_progress=False, echo=lambda _: None, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> SampleCorpus:
    return write_sample_corpus(tmp_path_factory.mktemp("corpus"), shards=3, clips_per_shard=12, seed=0)


@pytest.fixture(scope="session")
def ingested(corpus: SampleCorpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, IngestSummary]:
    out = tmp_path_factory.mktemp("stores") / "feats.zarr"
    return out, quiet_ingest(corpus.split_dir, out)


@pytest.fixture
def store_copy(ingested: tuple[Path, IngestSummary], tmp_path: Path) -> Path:
    """A private copy of the session store, for tests that change or damage it."""
    target = tmp_path / "copy.zarr"
    shutil.copytree(ingested[0], target)
    return target
