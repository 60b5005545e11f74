"""The benchmarks' corpus: a generated tone-language corpus in the real tarred layout, cached.

Generating costs ~50-300 ms per clip, so a corpus is written once under the cache root and
reused by every benchmark run with the same parameters.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from featstore.sample import write_sample_corpus

CACHE_ROOT = Path("/tmp/featstore-bench")


@dataclass(frozen=True)
class Corpus:
    root: Path  # holds train_tarred/
    shards: int
    clips: int
    audio_seconds: float  # sum of the manifests' durations

    @property
    def split_dir(self) -> Path:
        return self.root / "train_tarred"

    @property
    def compressed_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.split_dir.rglob("*") if p.is_file())


def ensure_corpus(
    shards: int, clips_per_shard: int, words: tuple[int, int], seed: int = 0, cache: Path = CACHE_ROOT
) -> Corpus:
    """The cached corpus for these parameters, generating it (atomically) when missing."""
    root = cache / f"corpus_s{shards}_c{clips_per_shard}_w{words[0]}-{words[1]}_seed{seed}"
    if not root.exists():
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        print(f"generating {shards} x {clips_per_shard} clips into {root} (cached for later runs)", flush=True)
        write_sample_corpus(
            partial,
            shards=shards,
            clips_per_shard=clips_per_shard,
            seed=seed,
            defects=False,
            split="train",
            words=words,
        )
        os.rename(partial, root)
    seconds = clips = 0.0
    for manifest in (root / "train_tarred").rglob("manifest_*.json"):
        for line in manifest.read_text(encoding="utf-8").splitlines():
            if line.strip():
                seconds += float(json.loads(line)["duration"])
                clips += 1
    return Corpus(root=root, shards=shards, clips=int(clips), audio_seconds=seconds)


def source_fingerprint() -> dict[str, str]:
    """Which featstore code produced the numbers: where it was imported from, and a hash of its sources."""
    import hashlib
    import subprocess

    import featstore

    src = Path(featstore.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(src.rglob("*.py")):
        digest.update(path.read_bytes())
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    return {
        "featstore_imported_from": str(src),
        "featstore_src_sha256": digest.hexdigest()[:16],
        "checkout_head_when_run": head,
    }
