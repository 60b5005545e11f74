"""`featstore sample --language b`: a second language with its own letters and its own sounds."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from featstore.sample import LANGUAGES, synthesize


def test_language_b_writes_only_its_own_letters(tmp_path: Path) -> None:
    args = ["sample", str(tmp_path), "--language", "b", "--shards", "1", "--clips", "3", "--no-defects"]
    result = subprocess.run([sys.executable, "-m", "featstore.cli", *args, "--words", "1", "2"], capture_output=True)
    assert result.returncode == 0, result.stderr
    manifest = tmp_path / "train_tarred" / "sharded_manifests_with_image" / "manifest_0.json"
    texts = [json.loads(line)["text"] for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert len(texts) == 3
    assert set("".join(texts)) - {" "} <= set(LANGUAGES["b"].alphabet)
    assert not set(LANGUAGES["b"].alphabet) & set(LANGUAGES["a"].alphabet)
    assert all(1 <= len(t.split()) <= 2 for t in texts)


def test_no_letter_of_b_sounds_like_a_letter_of_a() -> None:
    a, b = LANGUAGES["a"], LANGUAGES["b"]
    a_pitches = [a.pitch(c) for c in a.alphabet]
    for char in b.alphabet:
        nearest = min(abs(12 * math.log2(b.pitch(char) / p)) for p in a_pitches)
        assert nearest >= 0.5  # semitones: between a's pitches, never on one
    assert b.pitch(b.alphabet[0]) > b.pitch(b.alphabet[-1])  # and in the opposite order
    same_text = {
        name: synthesize("ab", voice.with_alphabet("ab"), np.random.default_rng(0)) for name, voice in LANGUAGES.items()
    }
    assert not np.allclose(same_text["a"], same_text["b"])  # the same letters sound different
