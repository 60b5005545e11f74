"""Ctrl-C with a local Dask cluster: one line from the command, nothing from its workers.

Ctrl-C on a terminal sends SIGINT to the whole process group, the worker processes included.
A worker that takes it prints a KeyboardInterrupt traceback, and a KeyboardInterrupt inside
LocalCluster's start leaves it half made, so that closing it fails (`AssertionError:
Status.init`). So:

- worker processes start with SIGINT ignored: it is ignored in this process while the cluster
  starts them, and exec keeps an ignored signal ignored (Python then leaves it so);
- meanwhile SIGINT is also blocked, which on Linux keeps it pending even while ignored; it is
  blocked from the start of the command (`held`), so that every thread started since (zarr's,
  Dask's) inherits the block and none of them can take the signal while it is ignored and drop
  it. It arrives, as KeyboardInterrupt, once the cluster is up, which then closes cleanly.

Threads started before `held` (OpenBLAS's, at numpy's import) could still take it: the command
line blocks SIGINT while it imports its libraries (featstore.cli). Outside the main thread all
of this is skipped.
"""

from __future__ import annotations

import contextlib
import multiprocessing.resource_tracker
import signal
import threading
from collections.abc import Iterator


class _Hold:
    """SIGINT blocked in the main thread, and the mask to restore."""

    def __init__(self) -> None:
        self.saved: set[int | signal.Signals] | None = None

    def block(self) -> None:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        if self.saved is None:
            self.saved = mask

    def release(self) -> None:
        if self.saved is not None:
            saved, self.saved = self.saved, None
            signal.pthread_sigmask(signal.SIG_SETMASK, saved)  # a pending Ctrl-C is raised here


_HOLD = _Hold()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold Ctrl-C from here until a local cluster is up (`cluster_starting`), or until this block ends."""
    if not _main_thread():
        yield
        return
    _HOLD.block()
    try:
        yield
    finally:
        _HOLD.release()


@contextlib.contextmanager
def cluster_starting() -> Iterator[None]:
    """Start worker processes in here: they ignore SIGINT, and a Ctrl-C meanwhile arrives after the block."""
    if not _main_thread():
        yield
        return
    # Python's resource tracker, started on first use, unblocks SIGINT in the thread that starts it
    # (a Dask thread): started here first, it is never started from there.
    multiprocessing.resource_tracker.ensure_running()
    _HOLD.block()  # again: ensure_running unblocked it in this thread
    if signal.SIGINT in signal.sigpending():
        _HOLD.release()  # a Ctrl-C came already: raise it now, before any worker starts
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)  # would discard a pending one: hence the check
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
    _HOLD.release()


def ignore_in_worker_process() -> None:
    """In a worker process that imports the command as its parent's main module, ignore SIGINT:
    it is the command's to handle (a worker restarted after the start did not inherit that)."""
    if multiprocessing.current_process().name != "MainProcess":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
