"""Real stores for the trainer tests, generated and ingested once per session.

The corpus is featstore's tone language over a 10-letter alphabet (each character a tone of its
own pitch, words separated by silence): a tiny random wav2vec2 learns it on a CPU in minutes.
"""

from __future__ import annotations

import json
import os

# No hub access here: fail fast instead of retrying for a minute per unknown model id.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread per process (the subprocesses inherit it): measured on the shared 2-core machine, a
# tiny-random training step took 0.8 s with one thread and 2.6 s with two (spinning, not working).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from featstore.ingest import ingest
from featstore.layout import IngestSettings
from featstore.sample import write_sample_corpus

ALPHABET = "abcdefghij"
B_ALPHABET = "αβγδεζηθικ"  # language b: its own letters, each with its own sound
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@dataclass(frozen=True)
class Stores:
    train: Path  # learnable tone-language corpus with text
    dev: Path  # held-out utterances of the same language
    small: Path  # a few utterances, for fast functional tests
    no_text: Path  # utterances whose text is empty (a test split)
    empty: Path  # a valid store with no utterances
    unseen: Path  # text with letters that `train` and `small` do not have
    b_small: Path  # a few utterances of language b: none of `train`'s letters
    b_train: Path  # language b, for adapting the base trained on language a (`train`)
    b_dev: Path  # held-out utterances of language b


def _corpus(root: Path, split: str, shards: int, clips: int, seed: int, language: str, alphabet: str) -> Path:
    corpus = write_sample_corpus(
        root,
        shards=shards,
        clips_per_shard=clips,
        seed=seed,
        defects=False,
        alphabet=alphabet,
        split=split,
        words=(1, 3),
        language=language,
    )
    return corpus.split_dir


def _blank_texts(split_dir: Path) -> None:
    """Turn a split into a test split: the manifests keep every field but the text is empty."""
    for manifest in split_dir.rglob("manifest_*.json"):
        records = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        manifest.write_text("".join(json.dumps({**r, "text": "", "raw_text": ""}) + "\n" for r in records))


def _ingest(split_dir: Path, out: Path, scheduler: str, settings: IngestSettings | None = None) -> Path:
    ingest(
        split_dir,
        out,
        settings=settings or IngestSettings(),
        scheduler=scheduler,
        show_progress=False,
        echo=lambda s: None,
    )
    return out


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    from distributed import LocalCluster

    root = tmp_path_factory.mktemp("corpora")
    jobs = {
        "train": (4, 100, 1, "a", ALPHABET),
        "dev": (1, 30, 2, "a", ALPHABET),
        "small": (1, 12, 3, "a", ALPHABET),
        "blank": (1, 6, 4, "a", ALPHABET),
        "unseen": (1, 4, 5, "a", "hijkl"),  # k and l are outside ALPHABET
        "b_small": (1, 4, 6, "b", B_ALPHABET),
        "b_train": (4, 100, 11, "b", B_ALPHABET),
        "b_dev": (1, 30, 12, "b", B_ALPHABET),
    }
    with ProcessPoolExecutor(2) as pool:  # generating opus audio is the slow part; use both cores
        futures = {name: pool.submit(_corpus, root, name, *job) for name, job in jobs.items()}
        splits = {name: future.result() for name, future in futures.items()}
    _blank_texts(splits["blank"])
    # One cluster for every ingest: starting one per store would cost seconds each.
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0", processes=True) as cluster:
        address = cluster.scheduler_address
        return Stores(
            train=_ingest(splits["train"], root / "train.zarr", address),
            dev=_ingest(splits["dev"], root / "dev.zarr", address),
            small=_ingest(splits["small"], root / "small.zarr", address),
            unseen=_ingest(splits["unseen"], root / "unseen.zarr", address),
            b_small=_ingest(splits["b_small"], root / "b_small.zarr", address),
            b_train=_ingest(splits["b_train"], root / "b_train.zarr", address),
            b_dev=_ingest(splits["b_dev"], root / "b_dev.zarr", address),
            no_text=_ingest(splits["blank"], root / "no_text.zarr", address, IngestSettings(keep_empty_text=True)),
            # Every clip rejected as too short: a valid store with no utterances.
            empty=_ingest(
                splits["blank"], root / "empty.zarr", address, IngestSettings(min_duration=29.0, keep_empty_text=True)
            ),
        )
