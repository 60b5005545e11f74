"""Mislabelled clips for a sample corpus: what data cleaning has to find in a real one.

Crowd-sourced corpora hold transcripts that belong to another clip and reads cut short. A
`MislabelPlanter` gives a chosen share of the clips such a transcript, while the audio keeps
saying the true one, and remembers which; `featstore sample` lists them in its sidecar file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MISLABELS = (
    "swapped",  # the transcript of the clip before it
    "halved",  # the first half of its own transcript
)
SIDECAR = "planted.json"  # written next to the split's manifests by `featstore sample`


class MislabelPlanter:
    """Chooses `round(fraction * clips)` of the clips numbered `first..clips-1`, alternating kinds.

    It draws from its own generator, so a corpus with no mislabels is the one the same seed gave
    before. Feed it every clip's record in order (`relabel`); it returns the record to write.
    """

    def __init__(self, clips: int, fraction: float, seed: int, first: int = 1) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"mislabel fraction {fraction} is not between 0 and 1")
        candidates = np.arange(max(first, 1), clips)  # clip 0 has no clip before it to swap with
        count = min(round(fraction * clips), candidates.size)
        chosen = np.sort(np.random.default_rng([seed, 1]).choice(candidates, size=count, replace=False))
        self.plan = {int(clip): MISLABELS[n % len(MISLABELS)] for n, clip in enumerate(chosen)}
        self.planted: dict[str, str] = {}  # audio_filepath -> kind
        self._previous_text = ""

    def relabel(self, clip: int, record: dict[str, Any]) -> dict[str, Any]:
        """`record` with the planned wrong transcript for clip number `clip`, or unchanged."""
        text, previous = str(record["text"]), self._previous_text
        self._previous_text = text
        kind = self.plan.get(clip)
        if kind is None:
            return record
        wrong = previous if kind == "swapped" else halve(text)
        if wrong == text:  # a clip before with the very same text: not a mislabel
            return record
        self.planted[str(record["audio_filepath"])] = kind
        return {**record, "text": wrong, "raw_text": wrong.capitalize() + "."}


def halve(text: str) -> str:
    """The first half of `text`'s words, or of its characters when it is one word."""
    words = text.split()
    if len(words) > 1:
        return " ".join(words[: len(words) // 2])
    return text[: max(len(text) // 2, 1)]
