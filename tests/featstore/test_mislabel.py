"""`featstore sample --mislabels`: wrong transcripts on unchanged audio, listed in planted.json."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

from featstore.audio import DecodeError, decode_clip
from featstore.mislabel import SIDECAR, halve
from featstore.sample import write_sample_corpus


def _texts(split_dir: Path) -> dict[str, str | None]:
    texts = {}
    for manifest in sorted(split_dir.rglob("manifest_*.json")):
        for line in manifest.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the planted bad_json line
            texts[record["audio_filepath"]] = record["text"]
    return texts


def _audio(split_dir: Path) -> dict[str, list[float] | bytes]:
    """Decoded samples per clip (webm files carry a random id, so bytes differ between runs)."""
    audio: dict[str, list[float] | bytes] = {}
    for shard in sorted(split_dir.rglob("audio_*.tar.xz")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                try:
                    audio[member.name] = decode_clip(data).tolist()
                except DecodeError:
                    audio[member.name] = data  # the planted undecodable clip
    return audio


def test_planted_mislabels_change_only_their_transcripts(tmp_path: Path) -> None:
    clean = write_sample_corpus(tmp_path / "clean", shards=2, clips_per_shard=15, seed=4, defects=False)
    dirty = write_sample_corpus(tmp_path / "dirty", shards=2, clips_per_shard=15, seed=4, defects=False, mislabels=0.2)
    sidecar = json.loads((dirty.split_dir / SIDECAR).read_text(encoding="utf-8"))
    assert sidecar == {"defects": dirty.defects, "mislabels": dirty.mislabels}
    assert len(dirty.mislabels) == 6 and set(dirty.mislabels.values()) == {"swapped", "halved"}
    assert _audio(dirty.split_dir) == _audio(clean.split_dir)

    true, written = _texts(clean.split_dir), _texts(dirty.split_dir)
    assert written.keys() == true.keys()
    previous = dict(zip(list(true)[1:], true.values(), strict=False))  # clip -> the clip before it
    for name, text in written.items():
        kind = dirty.mislabels.get(name)
        if kind is None:
            assert text == true[name]
        elif kind == "halved":
            assert text == halve(str(true[name])) and text != true[name]
        else:
            assert text == previous[name] and text != true[name]


def test_mislabels_spare_defect_clips_and_the_cli_plants_them(tmp_path: Path) -> None:
    corpus = write_sample_corpus(tmp_path / "a", shards=1, clips_per_shard=10, seed=1)
    assert corpus.mislabels == {}
    corpus = write_sample_corpus(tmp_path / "d", shards=1, clips_per_shard=30, seed=1, mislabels=0.5)
    assert len(corpus.mislabels) == 15
    assert not set(corpus.mislabels) & set(corpus.defects.values())  # a defect clip keeps its one defect
    featstore = str(Path(sys.executable).with_name("featstore"))
    done = subprocess.run(
        [
            featstore,
            "sample",
            str(tmp_path / "b"),
            "--shards",
            "1",
            "--clips",
            "10",
            "--no-defects",
            "--mislabels",
            "0.3",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    planted = json.loads((tmp_path / "b" / "train_tarred" / SIDECAR).read_text(encoding="utf-8"))
    assert len(planted["mislabels"]) == 3
    bad = subprocess.run(
        [featstore, "sample", str(tmp_path / "c"), "--mislabels", "1.5"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
