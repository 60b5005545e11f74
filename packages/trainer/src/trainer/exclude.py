"""Which utterances a run leaves out: a list of indices or audio_filepaths, or a CER threshold.

The store is never rewritten: the excluded indices are resolved once, against the store, when
the run starts, and recorded in run.json (`Exclusion`), so `--resume` leaves out the same ones
even if the list or scores file has changed since. The sampler then only sees the kept ones.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featstore import FeatStore
from trainer.errors import TrainerError
from trainer.stores import open_checked


@dataclass(frozen=True)
class Exclusion:
    """Utterances left out of training: their store indices, and where the list came from."""

    indices: tuple[int, ...] = ()
    source: str = ""  # e.g. "bad.txt" or "cer > 0.6 in scores.csv"

    def kept(self, count: int) -> np.ndarray:
        """Store indices that train, in store order (of a store of `count` utterances)."""
        outside = [index for index in self.indices if not 0 <= index < count]
        if outside:
            raise TrainerError(
                f"the exclusion ({self.source}) names utterance {outside[0]}, but the store has {count}: "
                "the run's store has changed since the run started"
            )
        keep = np.ones(count, dtype=bool)
        keep[list(self.indices)] = False
        return np.flatnonzero(keep)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Exclusion:
        return cls(tuple(data["indices"]), data["source"])


def filepath_indices(store: FeatStore) -> dict[str, int]:
    """Store index of each audio_filepath (read from the shards' manifest fields)."""
    return {str(store.record(i)["audio_filepath"]): i for i in range(len(store))}


def is_index(entry: str) -> bool:
    """ASCII digits only: str.isdigit also takes '²' (which int() refuses) and other scripts' digits."""
    return entry.isascii() and entry.isdigit()


def exclusion_from_list(path: Path, store: FeatStore) -> Exclusion:
    """Lines of store indices or audio_filepaths (blank lines and `#` comments skipped)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise TrainerError(f"{path}: cannot read the exclusion list ({error})") from None
    entries = [line.split("#", 1)[0].strip() for line in lines]
    entries = [entry for entry in entries if entry]
    by_path = filepath_indices(store) if any(not is_index(entry) for entry in entries) else {}
    indices = set()
    for entry in entries:
        index = int(entry) if is_index(entry) else by_path.get(entry)
        if index is None or not 0 <= index < len(store):
            raise TrainerError(f"{path}: entry {entry!r} is neither an index nor an audio_filepath of the store")
        indices.add(index)
    return Exclusion(tuple(sorted(indices)), str(path))


def exclusion_from_scores(scores: Path, cer_above: float, store: FeatStore) -> Exclusion:
    """Utterances whose CER in a `trainer score` table is above `cer_above`.

    The table must describe this store: each row's audio_filepath must be the one at its index.
    """
    try:
        with scores.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise TrainerError(f"{scores}: cannot read the scores ({error})") from None
    if not rows or not {"index", "audio_filepath", "cer"} <= set(rows[0]):
        raise TrainerError(f"{scores}: not a scores table from trainer score (needs index, audio_filepath, cer)")
    by_path = filepath_indices(store)
    try:
        scored = [(int(row["index"]), row["audio_filepath"], float(row["cer"])) for row in rows]
    except (TypeError, ValueError):
        raise TrainerError(f"{scores}: a row has no number in index or cer; write the table again") from None
    if not all(math.isfinite(cer) and cer >= 0 for _, _, cer in scored):
        raise TrainerError(f"{scores}: a row's cer is not a number >= 0; write the table again with trainer score")
    if len(scored) != len(store) or any(by_path.get(path) != index for index, path, _ in scored):
        raise TrainerError(f"{scores}: these scores are of another store; run trainer score on this one")
    indices = sorted(index for index, _, cer in scored if cer > cer_above)
    return Exclusion(tuple(indices), f"cer > {cer_above} in {scores}")


def resolve_exclusion(
    store_path: Path | None, listing: Path | None, cer_above: float | None, scores: Path | None
) -> Exclusion:
    """The exclusion that fit's options ask for (none without them), checked against the store."""
    if (cer_above is None) != (scores is None):
        raise TrainerError("--exclude-cer-above and --scores go together: a threshold and the table it applies to")
    if listing is None and scores is None:
        return Exclusion()
    if listing is not None and scores is not None:
        raise TrainerError("give either --exclude or --exclude-cer-above with --scores, not both")
    if store_path is None:
        raise TrainerError("--store is required to resolve an exclusion")
    store = open_checked(store_path)
    if listing is not None:
        return exclusion_from_list(listing, store)
    assert scores is not None and cer_above is not None
    return exclusion_from_scores(scores, cer_above, store)
