"""Moving batch audio from DataLoader workers to the main process through reused shared memory.

By default torch copies each batch tensor a worker sends into a fresh shared-memory segment and
passes its file descriptor over a socket, which the main process maps anew. First touching the
fresh pages was a quarter of the worker's CPU, and the hand-shake and mapping were most of the
main process's share of the loader (docs/BENCHMARKS.md). So each worker keeps a few buffers of
its own, sends a buffer's descriptor only the first time, and afterwards only the batch's shape:
the main process keeps every buffer mapped.

A worker reuses a buffer only after the main process has released it (`model_inputs` copies the
audio out, then calls `release`). Who may write a buffer is a small shared table of flags, one
row per worker: the worker writes a token of its own into a free buffer's flag when it fills it,
and the main process clears the flag only if it still holds that batch's token, so a batch
released twice cannot free a buffer a later batch holds (and `model_inputs` refuses a batch
already released). A worker that finds no free buffer (a consumer that never calls
`model_inputs`) sends a plain tensor the default way, so a buffer is never overwritten while in
use. Each iteration of the loader (each set of worker processes) has its own table, which lives
as long as the iterator.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, get_worker_info
from torch.utils.data.dataloader import _BaseDataLoaderIter

# A worker is at most `prefetch_factor` (2) batches ahead of the one the main process is using;
# one spare lets it fill a buffer while the main process is still releasing another.
BUFFERS_PER_WORKER = 4


@dataclass(frozen=True, slots=True)
class Lease:
    """Which buffer of which iteration's table holds a batch's audio; the first time, the buffer too."""

    table: int
    worker: int
    index: int
    token: int  # what the worker wrote in the buffer's flag: this lease's alone, so it ends once
    new_buffer: torch.Tensor | None  # the whole buffer, sent once per buffer (its descriptor)


class BatchConsumed(RuntimeError):
    """A batch's audio was already handed back to its worker (`model_inputs` was called on it before)."""


class Table:
    """One iteration's flags (shared), and what each process holds of the buffers.

    A flag is 0 when its buffer is free, else the token of the lease that holds it. A worker holds
    its own buffers; the main process holds every buffer it has been sent, mapped, so later
    batches in that buffer need only their shape.
    """

    _ids = itertools.count()

    def __init__(self, workers: int) -> None:
        self.id = next(Table._ids)
        self.flags = torch.zeros((max(workers, 1), BUFFERS_PER_WORKER), dtype=torch.int64).share_memory_()
        self.buffers: dict[tuple[int, int], torch.Tensor] = {}
        self.tokens = itertools.count(1)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "buffers": {}, "tokens": itertools.count(1)}  # a spawned worker's own


_tables: weakref.WeakValueDictionary[int, Table] = weakref.WeakValueDictionary()  # main process
_held: weakref.WeakKeyDictionary[_BaseDataLoaderIter, Table] = weakref.WeakKeyDictionary()


class BatchBuffers:
    """The table of the iteration about to start: `renew` in the main process, `take` in its workers."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.table: Table | None = None  # set while workers start; they keep their copy

    def renew(self) -> Table:
        """A new, all-free table for the workers about to start; the caller keeps it alive."""
        self.table = Table(self.workers)
        _tables[self.table.id] = self.table
        return self.table

    def take(self, rows: int, columns: int) -> tuple[torch.Tensor, Lease | None]:
        """An int16 [rows, columns] tensor to fill (contents undefined), and its lease if it is a buffer."""
        worker = get_worker_info()
        if worker is not None and self.table is not None:
            flags = self.table.flags[worker.id]
            for index in range(BUFFERS_PER_WORKER):
                if flags[index] == 0:
                    token = next(self.table.tokens)
                    flags[index] = token
                    buffer, new = self._sized((worker.id, index), rows * columns)
                    lease = Lease(self.table.id, worker.id, index, token, buffer if new else None)
                    return buffer[: rows * columns].view(rows, columns), lease
        return torch.empty((rows, columns), dtype=torch.int16), None  # no worker, or none free

    def give_back(self, lease: Lease) -> None:
        """In the worker: free a buffer whose batch was never sent (its collation failed)."""
        assert self.table is not None and self.table.id == lease.table
        self.table.flags[lease.worker, lease.index] = 0
        self.table.buffers.pop((lease.worker, lease.index), None)  # the main process may never have seen it

    def _sized(self, key: tuple[int, int], samples: int) -> tuple[torch.Tensor, bool]:
        assert self.table is not None
        buffer = self.table.buffers.get(key)
        if buffer is not None and buffer.numel() >= samples:
            return buffer, False
        # A power of two: a worker whose batches grow through the epoch re-sends a buffer a few times at most.
        buffer = torch.empty(1 << max(samples - 1, 1).bit_length(), dtype=torch.int16).share_memory_()
        self.table.buffers[key] = buffer
        return buffer, True


def leased_audio(lease: Lease, shape: tuple[int, int]) -> torch.Tensor:
    """A leased batch's audio in the main process, from the buffer its worker sent once."""
    table = _tables[lease.table]  # alive: the iterator delivering this batch holds it
    key = (lease.worker, lease.index)
    if lease.new_buffer is not None:
        table.buffers[key] = lease.new_buffer
    rows, columns = shape
    return table.buffers[key][: rows * columns].view(rows, columns)


def check_held(lease: Lease | None) -> None:
    """Raise BatchConsumed if the batch's buffer was already given back (its audio may be another batch's).

    A batch whose iteration has ended is safe to read: that iteration's workers are gone.
    """
    if lease is None:
        return
    table = _tables.get(lease.table)
    if table is not None and int(table.flags[lease.worker, lease.index]) != lease.token:
        raise BatchConsumed("this batch was already passed to model_inputs, which gives its audio back: call it once")


def release(lease: Lease | None) -> None:
    """Give a batch's buffer back to its worker, once: a lease already ended changes nothing."""
    if lease is None:
        return
    table = _tables.get(lease.table)
    # Only this lease's token is cleared: the worker writes a flag only while it is 0, so no other
    # batch's token can have replaced it between the read and the write.
    if table is not None and int(table.flags[lease.worker, lease.index]) == lease.token:
        table.flags[lease.worker, lease.index] = 0


class BufferedLoader(DataLoader[Any]):
    """A DataLoader whose every iteration starts its workers with a fresh table of `buffers`.

    Workers are never persistent: persistent ones would keep the first iteration's table.
    """

    def __init__(self, *args: Any, buffers: BatchBuffers, **kwargs: Any) -> None:
        if kwargs.get("persistent_workers"):
            raise ValueError("BufferedLoader starts new workers each iteration: persistent_workers must be False")
        super().__init__(*args, **kwargs)
        self.buffers = buffers

    def __iter__(self) -> _BaseDataLoaderIter:
        if self.num_workers == 0:
            return super().__iter__()
        table = self.buffers.renew()
        iterator = super().__iter__()  # starts the workers, each with its copy of `buffers` and this table
        self.buffers.table = None  # from here the iterator alone keeps it: it goes when the iteration ends
        _held[iterator] = table
        return iterator
