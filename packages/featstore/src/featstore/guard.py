"""What a writer proves before it touches a path: the output is not the input, an existing
output is a featstore store (by its root metadata), and no other writer holds it.

`--overwrite` replaces a store without a moment in which a half-built store is in place: the
new, empty store is built beside the old one, with this writer's lock already inside, and the
two are swapped by renames; only then is the old one deleted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from featstore import __version__
from featstore.errors import FeatstoreError
from featstore.layout import IngestSettings, is_store
from featstore.lock import WriterLock, lock_location, writer_lock
from featstore.newstore import build_empty_store, create_store
from featstore.storage import Location


def refuse_overlap(source: Location, out: Location) -> None:
    """The output must be neither the input, nor inside it, nor around it (with or without --overwrite)."""
    if out.overlaps(source):
        raise FeatstoreError(
            f"--out {out.url} is the input {source.url}, lies inside it, or contains it; choose an output elsewhere"
        )


def check_output(store: Location, overwrite: bool) -> None:
    """Refuse a file, and a directory that holds something other than a featstore store."""
    if not store.exists():
        return
    if not store.is_dir():
        raise FeatstoreError(f"{store.url} is a file, not a store; choose a directory path such as feats.zarr")
    if _is_empty(store) or is_store(store):
        return
    action = "--overwrite only replaces a featstore store; nothing was deleted" if overwrite else "nothing was changed"
    raise FeatstoreError(
        f"{store.url} is not a featstore store (no featstore root metadata): {action}; choose a new or empty directory"
    )


@contextlib.contextmanager
def writable_store(
    store: Location, settings: IngestSettings, overwrite: bool, note: Callable[[str], None]
) -> Iterator[WriterLock]:
    """The store, created or (with `overwrite`) replaced by an empty one, locked for this writer."""
    check_output(store, overwrite)
    created = not store.exists() or _is_empty(store)
    if created:
        create_store(store, settings, __version__)
    with writer_lock(store, note) as lock:
        if overwrite and not created:
            _replace_with_empty(store, settings, lock)
        yield lock


def _replace_with_empty(store: Location, settings: IngestSettings, lock: WriterLock) -> None:
    with store.built_aside() as partial:
        build_empty_store(partial, settings, __version__)
        lock_location(partial).write_atomic(lock_location(store).read_bytes())  # the same lock, inside the new store
        old = Location(partial.url.removesuffix(".partial") + ".replaced")
        store.move_to(old)
        try:
            partial.move_to(store)
        except OSError:  # another writer created a store here in between: keep theirs
            with contextlib.suppress(OSError):
                old.move_to(store)
            raise FeatstoreError(f"{store.url}: another writer created a store while this one replaced it") from None
    old.remove()


def _is_empty(store: Location) -> bool:
    fs, path = store.filesystem()
    return not fs.ls(path)
