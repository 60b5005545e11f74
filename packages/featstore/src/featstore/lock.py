"""One writer at a time: a lock file inside the store, created exclusively, naming its holder.

    feats.zarr/featstore.lock    {"pid": 4242, "host": "node-3", "started": "2026-11-29T15:04:05Z", ...}

A writer (ingest, repair) creates it before it changes anything and removes it when done;
readers never look at it. A lock is stale when its holder is gone: a pid that no longer runs
on this host, or, for a holder on another host, no refresh for STALE_AFTER_SECONDS (a writer
refreshes it as it works). A stale lock is taken over with a note; `featstore unlock` breaks
one by hand. On object stores (fsspec URLs) creation is check-then-put, not atomic: two writers
starting at the same instant may both get in (see the README).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from featstore.errors import FeatstoreError
from featstore.storage import Location, dump_json

LOCK_FILE = "featstore.lock"
# A holder on another host cannot be asked whether it still runs: its lock is stale once it has
# not been refreshed for this long. Writers refresh every REFRESH_SECONDS while they work.
STALE_AFTER_SECONDS = 30 * 60
REFRESH_SECONDS = 60


class StoreLocked(FeatstoreError):
    """Another writer holds the store."""


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    started: str  # ISO 8601, UTC
    refreshed: float  # Unix time of the last refresh
    token: str  # tells this holder's lock from a later one by the same pid

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"

    def stale_because(self, now: float) -> str | None:
        """Why the holder is gone, or None when it may still be writing."""
        if self.host == socket.gethostname():
            return None if _process_exists(self.pid) else f"pid {self.pid} no longer runs on this host"
        idle = now - self.refreshed
        return f"not refreshed for {idle / 60:.0f} min" if idle > STALE_AFTER_SECONDS else None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        return True
    return True


def lock_location(store: Location) -> Location:
    return store.child(LOCK_FILE)


def read_holder(store: Location) -> LockHolder | None:
    """The current holder, or None when the store is not locked (an unreadable lock counts as none)."""
    try:
        data = json.loads(lock_location(store).read_bytes())
        return LockHolder(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return LockHolder(pid=-1, host="?", started="?", refreshed=0.0, token="unreadable")


class WriterLock:
    """The lock this process holds on a store; see the module docstring."""

    def __init__(self, store: Location, holder: LockHolder) -> None:
        self.store = store
        self.holder = holder
        self._last_refresh = time.monotonic()

    @classmethod
    def acquire(cls, store: Location, note: Callable[[str], None]) -> WriterLock:
        """Take the lock, taking over a stale one (with a note); raise StoreLocked when it is held."""
        now = time.time()
        holder = LockHolder(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            refreshed=now,
            token=uuid.uuid4().hex,
        )
        location = lock_location(store)
        for _ in range(3):  # another writer may take over the same stale lock in between
            if location.create_exclusive(dump_json(asdict(holder))):
                return cls(store, holder)
            current = read_holder(store)
            if current is None:
                continue  # released in between: try again
            reason = current.stale_because(time.time())
            if reason is None:
                raise StoreLocked(
                    f"{store.url} is being written by another featstore ({current.describe()}); "
                    f"wait for it, or if it is gone run `featstore unlock {store.url}`"
                )
            if _remove_if_unchanged(location, current):
                note(f"note: took over a stale lock ({current.describe()}: {reason})")
        raise StoreLocked(f"{store.url}: could not take the writer lock; another writer is starting. Try again")

    def refresh(self) -> None:
        """Show other hosts that this writer still works (at most every REFRESH_SECONDS)."""
        if time.monotonic() - self._last_refresh < REFRESH_SECONDS:
            return
        self._last_refresh = time.monotonic()
        if self._still_mine():
            self.holder = LockHolder(**{**asdict(self.holder), "refreshed": time.time()})
            lock_location(self.store).write_atomic(dump_json(asdict(self.holder)))

    def release(self) -> None:
        if self._still_mine():
            lock_location(self.store).remove()

    def _still_mine(self) -> bool:
        current = read_holder(self.store)
        return current is not None and current.token == self.holder.token


def _remove_if_unchanged(location: Location, seen: LockHolder) -> bool:
    """Remove a stale lock unless another writer replaced it meanwhile; True when it was removed.

    Locally the lock is first renamed aside (atomic), so a fresh lock created in between by
    another writer is put back instead of deleted.
    """
    if not location.is_local:
        location.remove()
        return True
    aside = f"{location.url}.{uuid.uuid4().hex[:8]}.stale"
    try:
        os.rename(location.url, aside)
    except FileNotFoundError:
        return False
    try:
        with open(aside, "rb") as file:
            moved: Any = json.loads(file.read())
        if not isinstance(moved, dict) or moved.get("token") == seen.token or seen.token == "unreadable":
            return True
        with contextlib.suppress(FileExistsError):
            os.link(aside, location.url)  # not the lock we judged stale: put it back
        return False
    except ValueError:
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)


def break_lock(store: Location, force: bool) -> LockHolder | None:
    """Remove the store's lock and return who held it; a live holder on this host needs `force`."""
    holder = read_holder(store)
    if holder is None:
        return None
    if not force and holder.stale_because(time.time()) is None:
        raise FeatstoreError(
            f"{store.url} is locked by a writer that still runs ({holder.describe()}); "
            "stop it first, or use --force if you are sure it no longer writes"
        )
    with contextlib.suppress(FileNotFoundError):
        lock_location(store).remove()
    return holder


@contextlib.contextmanager
def writer_lock(store: Location, note: Callable[[str], None]) -> Iterator[WriterLock]:
    lock = WriterLock.acquire(store, note)
    try:
        yield lock
    finally:
        lock.release()
