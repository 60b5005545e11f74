"""Reading a store: the index in memory, audio lazily, chunk by chunk, through a small cache.

`open_store(path)` snapshots the root's list of complete shards (so a store still being ingested
shows its completed shards only), holds the index columns a training reader needs as contiguous
numpy arrays and the texts as their compressed chunks (no Python object per utterance, so forked
workers share the pages), reads levels and clipping when first asked for and manifest fields one
shard at a time when a record is asked for, and reads audio chunks
straight from their files, decoding them with the store's Blosc codec: zarr's generic read path
costs about three times as much per chunk. It holds no open file between reads, so it is safe to
share with forked DataLoader workers. The store may be a local path or an fsspec URL.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, overload

import numcodecs
import numcodecs.abc
import numcodecs.blosc
import numpy as np

from featstore.chunks import chunk_codec, chunk_key
from featstore.columns import ColumnReader
from featstore.errors import FeatstoreError
from featstore.index import load_columns, load_float_column, read_index
from featstore.layout import open_root
from featstore.shardmeta import read_shard_summary
from featstore.storage import Location, locate

DEFAULT_CACHE_BYTES = 64 * 2**20


class StoreChanged(FeatstoreError):
    """The store was replaced or rewritten since this reader opened it."""


@dataclass(frozen=True)
class Utterance:
    """Normalized float32 audio at the store's sample rate, and its index record."""

    audio: np.ndarray
    record: dict[str, Any]


class FeatStore(Sequence[Utterance]):
    """A read-only view of a store; see `open_store`."""

    def __init__(self, location: Location, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.location = location
        root, self.info = open_root(location)
        # A replaced store (--overwrite swaps in a new directory) is a new inode: checked on every
        # chunk read, one stat against a ~0.5 ms decode, so a reader never mixes two stores' audio.
        self._identity = location.identity()
        self._index = read_index(root)
        self.shard_names: list[str] = [entry.name for entry in self._index.shards]
        self.checksums: dict[str, str] = {entry.name: entry.checksum for entry in self._index.shards}
        columns = load_columns(location, self._index)
        self.shard_codes = columns.shard
        self.buckets = columns.bucket
        self.offsets = columns.offset
        self.lengths = columns.length
        self.scales = columns.scale
        self.texts = columns.texts
        self._shard_starts = np.searchsorted(self.shard_codes, np.arange(len(self.shard_names)))
        self._fields: tuple[int, list[dict[str, Any]]] = (-1, [])  # one shard's manifest fields, read on demand
        self._cache = _ChunkCache(cache_bytes)
        self._codec = chunk_codec()
        self._fs, self._root = location.filesystem()

    @cached_property
    def rejects(self) -> list[dict[str, Any]]:
        """Every reject: the manifests' first, then each complete shard's (read from its group when asked)."""
        root, _ = open_root(self.location)
        rejects = [reject.to_json() for reject in self._index.rejects]
        for name in self.shard_names:
            summary = read_shard_summary(root, name)
            if summary is None or summary.checksum != self.checksums[name]:
                raise self._changed(f"shard {name} is gone or rewritten")
            rejects.extend(reject.to_json() for reject in summary.rejects)
        return rejects

    @cached_property
    def levels_db(self) -> np.ndarray:
        """Each utterance's level (dBFS), read when first asked for: training needs none."""
        return load_float_column(self.location, self._index, "level_db")

    @cached_property
    def clipping(self) -> np.ndarray:
        """Each utterance's share of clipped samples, read when first asked for."""
        return load_float_column(self.location, self._index, "clipping")

    @property
    def sample_rate(self) -> int:
        return self.info.sample_rate

    @cached_property
    def durations(self) -> np.ndarray:
        """Seconds of audio per utterance (from the index; no audio is read)."""
        return self.lengths / float(self.sample_rate)

    def __len__(self) -> int:
        return int(self.lengths.size)

    @overload
    def __getitem__(self, i: int) -> Utterance: ...
    @overload
    def __getitem__(self, i: slice) -> list[Utterance]: ...
    def __getitem__(self, i: int | slice) -> Utterance | list[Utterance]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return Utterance(self.audio(i), self.record(i))

    def record(self, i: int) -> dict[str, Any]:
        """Every manifest field of utterance `i`, plus its text, shard and stored duration."""
        i = self._check(i)
        code = int(self.shard_codes[i])
        return {
            **self._shard_fields(code)[i - int(self._shard_starts[code])],
            "text": self.texts[i],
            "shard": self.shard_names[self.shard_codes[i]],
            "stored_duration": float(self.durations[i]),
        }

    def _shard_fields(self, code: int) -> list[dict[str, Any]]:
        """The manifest fields of one shard's utterances, kept while records of that shard are asked for."""
        if self._fields[0] != code:
            self._check_identity()
            name = self.shard_names[code]
            try:
                summary = read_shard_summary(open_root(self.location)[0], name)
            except FeatstoreError:  # the store itself is gone or replaced at this moment
                summary = None
            if summary is None or summary.checksum != self.checksums[name]:
                raise self._changed(f"shard {name} is gone or rewritten")
            clips = self._index.shards[code].clips
            self._fields = (code, ColumnReader(self._fs, self._root).fields(name, clips))
        return self._fields[1]

    def _changed(self, what: str) -> StoreChanged:
        return StoreChanged(f"{self.location.url} changed since it was opened ({what}); reopen it with open_store")

    def _check_identity(self) -> None:
        if self._identity is None:
            return
        try:
            identity = self.location.identity()
        except FileNotFoundError:
            identity = None
        if identity != self._identity:
            raise self._changed("the store was replaced, e.g. by ingest --overwrite")

    def audio(self, i: int) -> np.ndarray:
        """Normalized float32 audio of utterance `i`, read from the chunks it spans."""
        i = self._check(i)
        return np.multiply(self.raw_audio(i), self.scales[i], dtype=np.float32)  # one pass, one array

    def raw_audio(self, i: int) -> np.ndarray:
        """The stored int16 samples of utterance `i` (multiply by `scales[i]` for the float value).

        A view into the cached chunk when the utterance lies in one; otherwise a copy of just its
        samples from each chunk it spans.
        """
        chunk_samples = self.info.chunk_samples
        start, length = self.offsets.item(i), self.lengths.item(i)
        shard, bucket = self.shard_codes.item(i), self.buckets.item(i)
        first, last = start // chunk_samples, (start + length - 1) // chunk_samples
        begin, end = start - first * chunk_samples, start + length - last * chunk_samples
        if first == last:
            return self._chunk(shard, bucket, first)[begin:end]
        pieces = [self._chunk(shard, bucket, k) for k in range(first, last + 1)]
        return np.concatenate([pieces[0][begin:], *pieces[1:-1], pieces[-1][:end]])

    def _chunk(self, shard: int, bucket: int, chunk: int) -> np.ndarray:
        cached = self._cache.get((shard, bucket, chunk))
        if cached is not None:
            return cached
        name = self.shard_names[shard]
        key = chunk_key(name, bucket, chunk)
        try:
            data = self._fs.cat_file(f"{self._root}/{key}")
        except FileNotFoundError:
            self._check_identity()
            raise self._damaged(name, f"audio chunk {key} is missing") from None
        self._check_identity()
        try:
            samples = _decode_in_this_thread(self._codec, data)
            if samples.size != self.info.chunk_samples:
                raise ValueError(f"{samples.size} samples, expected {self.info.chunk_samples}")
        except (RuntimeError, ValueError, TypeError) as error:  # Blosc says "error during blosc decompression: -1"
            raise self._damaged(name, f"audio chunk {key} is corrupt ({error})") from None
        self._cache.put((shard, bucket, chunk), samples)
        return samples

    def _damaged(self, shard: str, what: str) -> FeatstoreError:
        return FeatstoreError(
            f"{self.location.url}: shard {shard}: {what}; "
            f"run `featstore repair {self.location.url} --redo {shard}`, then re-run the ingest"
        )

    def _check(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"utterance {i} out of range for a store of {n}")
        return i % n


def _decode_in_this_thread(codec: numcodecs.abc.Codec, data: bytes) -> np.ndarray:
    """Decode one chunk without Blosc's thread pool, which numcodecs uses from a main thread.

    For one 512 KB chunk the hand-offs cost more than they save: an epoch of length-grouped
    reads took ~8% more CPU with them. The setting is numcodecs' global, restored at once.
    """
    threads, numcodecs.blosc.use_threads = numcodecs.blosc.use_threads, False
    try:
        return np.frombuffer(codec.decode(data), dtype="<i2")
    finally:
        numcodecs.blosc.use_threads = threads


class _ChunkCache:
    """Least-recently-used decoded chunks, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self.misses = 0

    def get(self, key: tuple[int, int, int]) -> np.ndarray | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: tuple[int, int, int], value: np.ndarray) -> None:
        self.misses += 1
        self._items[key] = value
        self._bytes += value.nbytes
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, evicted = self._items.popitem(last=False)
            self._bytes -= evicted.nbytes


def open_store(path: str | Path, cache_bytes: int = DEFAULT_CACHE_BYTES) -> FeatStore:
    """Open a store read-only: `len(store)`, `store.durations`, `store.texts`, `store[i]`.

    >>> store = open_store("feats.zarr")          # doctest: +SKIP
    >>> utterance = store[0]                      # doctest: +SKIP
    >>> utterance.audio.dtype, utterance.record["text"]   # doctest: +SKIP
    """
    return FeatStore(locate(path), cache_bytes)
