"""Moving batch audio from DataLoader workers to the main process through reused shared memory.

By default torch copies each batch tensor a worker sends into a fresh shared-memory segment and
passes its file descriptor over a socket, which the main process maps anew. First touching the
fresh pages was a quarter of the worker's CPU, and the hand-shake and mapping were most of the
main process's share of the loader (docs/BENCHMARKS.md). So each worker keeps a few buffers of
its own, sends a buffer's descriptor only the first time, and afterwards only the batch's shape:
the main process keeps every buffer mapped.

A worker reuses a buffer only after the main process has released it (`model_inputs` copies the
audio out, then calls `release`). Who may write a buffer is a small shared table of flags, one
row per worker: the worker sets a flag when it fills that buffer, the main process clears it. A
worker that finds no free buffer (a consumer that never calls `model_inputs`) sends a plain
tensor the default way, so a buffer is never overwritten while in use. Each iteration of the
loader (each set of worker processes) has its own table, which lives as long as the iterator.
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
    new_buffer: torch.Tensor | None  # the whole buffer, sent once per buffer (its descriptor)


class Table:
    """One iteration's flags (shared), and what each process holds of the buffers.

    A worker holds its own buffers; the main process holds every buffer it has been sent,
    mapped, so later batches in that buffer need only their shape.
    """

    _ids = itertools.count()

    def __init__(self, workers: int) -> None:
        self.id = next(Table._ids)
        self.flags = torch.zeros((max(workers, 1), BUFFERS_PER_WORKER), dtype=torch.uint8).share_memory_()
        self.buffers: dict[tuple[int, int], torch.Tensor] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "buffers": {}}  # a spawned worker allocates its own


_tables: weakref.WeakValueDictionary[int, Table] = weakref.WeakValueDictionary()  # main process
_held: weakref.WeakKeyDictionary[_BaseDataLoaderIter, Table] = weakref.WeakKeyDictionary()


class BatchBuffers:
    """The current iteration's table: `take` in a worker, `renew` in the main process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.table = Table(workers)

    def renew(self) -> Table:
        """A new, all-free table for the workers about to start; the caller keeps it alive."""
        self.table = Table(self.workers)
        _tables[self.table.id] = self.table
        return self.table

    def take(self, rows: int, columns: int) -> tuple[torch.Tensor, Lease | None]:
        """An int16 [rows, columns] tensor to fill (contents undefined), and its lease if it is a buffer."""
        worker = get_worker_info()
        if worker is not None:
            flags = self.table.flags[worker.id]
            for index in range(BUFFERS_PER_WORKER):
                if flags[index] == 0:
                    flags[index] = 1
                    buffer, new = self._sized((worker.id, index), rows * columns)
                    lease = Lease(self.table.id, worker.id, index, buffer if new else None)
                    return buffer[: rows * columns].view(rows, columns), lease
        return torch.empty((rows, columns), dtype=torch.int16), None  # no worker, or none free

    def _sized(self, key: tuple[int, int], samples: int) -> tuple[torch.Tensor, bool]:
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


def release(lease: Lease | None) -> None:
    """Give a batch's buffer back to its worker (a no-op for a plain tensor or an ended iteration's)."""
    if lease is None:
        return
    table = _tables.get(lease.table)
    if table is not None:
        table.flags[lease.worker, lease.index] = 0


class BufferedLoader(DataLoader[Any]):
    """A DataLoader whose every iteration starts its workers with a fresh table of `buffers`."""

    def __init__(self, *args: Any, buffers: BatchBuffers, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffers = buffers

    def __iter__(self) -> _BaseDataLoaderIter:
        table = self.buffers.renew()
        iterator = super().__iter__()
        _held[iterator] = table  # the table lives as long as the iterator that delivers its batches
        return iterator
