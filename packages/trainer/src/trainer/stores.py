"""Opening a store at the boundary: featstore's errors, and the checks a trainer command needs."""

from __future__ import annotations

from pathlib import Path

from featstore import FeatStore, FeatstoreError, open_store
from trainer.errors import TrainerError


def open_checked(path: str | Path, need_text: bool = False) -> FeatStore:
    """Open a store for training or inference, or fail with one line that says what is wrong."""
    try:
        store = open_store(path)
    except FeatstoreError as error:
        raise TrainerError(str(error)) from None
    if len(store) == 0:
        raise TrainerError(f"{path}: the store has no utterances; ingest some shards first")
    if need_text and not any(text.strip() for text in store.texts):
        raise TrainerError(f"{path}: no utterance has text; training and evaluation need transcripts")
    return store


def check_scorable(path: str | Path, texts: list[str]) -> None:
    """Refuse a store whose every transcript is empty once normalized (e.g. only punctuation, with
    --strip-punctuation): no WER could be computed, and a run would pick its best step from NaN."""
    if not any(text.strip() for text in texts):
        raise TrainerError(f"{path}: no transcript has any text left after normalization; nothing can be scored")
