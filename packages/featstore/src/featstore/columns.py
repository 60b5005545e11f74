"""A shard's index rows as Zarr v3 arrays in its group (formats 2 and 3): one 1-D array per column.

    shards/<shard>/bucket, offset, length             int32, int64, int64
    shards/<shard>/scale, level_db, clipping          float64 (the values the checksum hashed)
    shards/<shard>/text, fields                        uint8: UTF-8 bytes, all rows end to end
    shards/<shard>/text_offsets, fields_offsets        int64, clips + 1: row i is bytes [o[i], o[i+1])

Each array is Blosc-compressed with the store's codec (UTF-8 ones without its bit shuffle), so
any Zarr v3 reader (zarr-python, tensorstore) reads them. Every array is one chunk except `text`,
chunked every TEXT_CHUNK_BYTES: featstore's reader keeps the texts in memory as those compressed
chunks (`TextColumn`) and the numeric columns as contiguous numpy arrays, reading the chunk files
directly: no Python object per utterance. Texts and fields are UTF-8 bytes plus offsets rather
than Zarr's variable-length strings (measured in docs/FORMAT.md).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import zarr

from featstore.chunks import SHARDS_GROUP, array_chunk_key, array_codec, chunk_codec
from featstore.errors import FeatstoreError
from featstore.storage import dump_json

NUMERIC_COLUMNS: dict[str, np.dtype[Any]] = {
    "bucket": np.dtype("<i4"),
    "offset": np.dtype("<i8"),
    "length": np.dtype("<i8"),
    "scale": np.dtype("<f8"),
    "level_db": np.dtype("<f8"),
    "clipping": np.dtype("<f8"),
}
RAGGED_COLUMNS = ("text", "fields")
OFFSETS_DTYPE = np.dtype("<i8")
# Readers hold texts as these compressed chunks and decode one to read a text: about a third of
# the texts' bytes in memory, ~30 us a text in random order, ~2 us in storage order. Stores
# written before chunked texts hold one chunk.
TEXT_CHUNK_BYTES = 16 * 2**10


class DamagedColumn(FeatstoreError):
    """A shard's column array is missing, unreadable, or disagrees with the root's list."""


def pack_utf8(values: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one UTF-8 byte array plus offsets (n + 1, starting at 0)."""
    encoded = [value.encode() for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=OFFSETS_DTYPE)
    np.cumsum([len(item) for item in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def write_columns(group: zarr.Group, columns: dict[str, list[Any]]) -> None:
    """Write a shard's rows (`columns`: one list per row column) as the group's column arrays."""
    for name, dtype in NUMERIC_COLUMNS.items():
        _write_array(group, name, np.asarray(columns[name], dtype=dtype))
    texts = {"text": columns["text"], "fields": [dump_json(fields).decode() for fields in columns["fields"]]}
    for name, values in texts.items():
        _write_utf8(group, name, *pack_utf8(values))


def rewrite_utf8_columns(group: zarr.Group, reader: ColumnReader, shard: str, clips: int) -> None:
    """Lay a shard's text and fields out anew as write_columns does (format 2 had unchunked,
    bit-shuffled text); the bytes, and so the shard's checksum, stay the same."""
    for name in RAGGED_COLUMNS:
        _write_utf8(group, name, *reader.ragged(shard, name, clips))


def _write_utf8(group: zarr.Group, name: str, data: np.ndarray, offsets: np.ndarray) -> None:
    _write_array(group, name, data, TEXT_CHUNK_BYTES if name == "text" else None)
    _write_array(group, f"{name}_offsets", offsets)


def _write_array(group: zarr.Group, name: str, values: np.ndarray, chunk: int | None = None) -> None:
    array = group.create_array(
        name,
        shape=values.shape,
        chunks=(chunk or max(1, values.size),),
        dtype=values.dtype,
        fill_value=0,
        compressors=[array_codec("noshuffle" if values.dtype == np.uint8 else None)],
        config={"write_empty_chunks": True},  # the reader reads chunk files directly: every one is there
        overwrite=True,  # a migration stopped half way writes the shard's columns again
    )
    if values.size:
        array[:] = values


class ColumnReader:
    """Reads a shard's column arrays straight from their chunk files (one read and decode each)."""

    def __init__(self, fs: Any, root_path: str) -> None:
        self._fs = fs
        self._root = root_path.rstrip("/")
        self._codec = chunk_codec()

    def decode(self, chunk: bytes | np.ndarray) -> bytes:
        """One compressed chunk file's bytes (the store's Blosc codec)."""
        return bytes(self._codec.decode(chunk))

    def numeric(self, shard: str, name: str, size: int) -> np.ndarray:
        return self._read(shard, name, size, NUMERIC_COLUMNS[name])

    def numeric_offsets(self, shard: str, name: str, size: int) -> np.ndarray:
        """The `size + 1` offsets of a text column of `size` rows."""
        return self._read(shard, f"{name}_offsets", size + 1, OFFSETS_DTYPE)

    def utf8(self, shard: str, name: str, size: int) -> np.ndarray:
        """The `size` UTF-8 bytes of a text column."""
        chunks = self.compressed_chunks(shard, name, size)
        try:
            data = b"".join(self.decode(chunks.chunk(k)) for k in range(len(chunks)))
        except (RuntimeError, ValueError) as error:
            raise _unreadable(shard, name, error) from None
        if len(data) != chunks.values_per_chunk * len(chunks):  # zarr fills the last chunk up to the chunk size
            raise DamagedColumn(f"{shard}/{name}: column holds {len(data)} bytes, its offsets say {size}")
        return np.frombuffer(data, dtype=np.uint8)[:size]

    def compressed_chunks(self, shard: str, name: str, size: int) -> CompressedChunks:
        """Every chunk file, as stored, of a 1-D column of `size` values."""
        if size == 0:
            return CompressedChunks(1, np.zeros(0, dtype=np.uint8), np.zeros(1, dtype=np.int64))
        try:
            metadata = json.loads(self._fs.cat_file(f"{self._root}/{SHARDS_GROUP}/{shard}/{name}/zarr.json"))
            chunk = int(metadata["chunk_grid"]["configuration"]["chunk_shape"][0])
            keys = [f"{self._root}/{array_chunk_key(shard, name, k)}" for k in range(-(-size // chunk))]
            files = [self._fs.cat_file(key) for key in keys]
            starts = np.concatenate([[0], np.cumsum([len(data) for data in files])]).astype(np.int64)
            return CompressedChunks(chunk, np.frombuffer(b"".join(files), dtype=np.uint8), starts)
        except (FileNotFoundError, KeyError, IndexError, TypeError, ValueError) as error:
            raise _unreadable(shard, name, error) from None

    def ragged(self, shard: str, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(UTF-8 bytes, offsets) of a text column of `size` rows."""
        offsets = self.numeric_offsets(shard, name, size)
        return self.utf8(shard, name, int(offsets[-1])), offsets

    def fields(self, shard: str, size: int) -> list[dict[str, Any]]:
        data, offsets = self.ragged(shard, "fields", size)
        raw = data.tobytes()
        return [json.loads(raw[offsets[i] : offsets[i + 1]]) for i in range(size)]

    def _read(self, shard: str, name: str, size: int, dtype: np.dtype) -> np.ndarray:
        if size == 0:
            return np.zeros(0, dtype=dtype)
        path = f"{self._root}/{array_chunk_key(shard, name, 0)}"
        try:
            values = np.frombuffer(self._codec.decode(self._fs.cat_file(path)), dtype=dtype)
        except (FileNotFoundError, RuntimeError, ValueError) as error:
            raise _unreadable(shard, name, error) from None
        if values.size != size:
            raise DamagedColumn(f"{shard}/{name}: column holds {values.size} values, the index says {size}")
        return values


@dataclass(frozen=True)
class CompressedChunks:
    """A column's chunk files end to end in one buffer: chunk `k` is `data[starts[k]:starts[k + 1]]`.

    One buffer rather than a bytes object per chunk: reading a chunk then touches no reference
    count in it, so forked workers do not copy its pages.
    """

    values_per_chunk: int
    data: np.ndarray  # uint8
    starts: np.ndarray  # int64, chunks + 1

    def __len__(self) -> int:
        return int(self.starts.size) - 1

    def chunk(self, k: int) -> np.ndarray:
        return self.data[self.starts.item(k) : self.starts.item(k + 1)]


def _unreadable(shard: str, name: str, error: Exception) -> DamagedColumn:
    return DamagedColumn(f"{shard}/{name}: column unreadable ({type(error).__name__}); run `featstore verify`")


class TextColumn(Sequence[str]):
    """Every shard's texts as the store holds them (compressed chunks of UTF-8), decoded per text.

    A list of str would be one Python object per utterance, whose reference counts forked
    DataLoader workers touch, copying the pages that hold them into every worker; the decoded
    bytes would be about three times the compressed ones. `bounds` holds, shard after shard, each
    shard's `clips + 1` text offsets, so text `i` of shard `code` spans bytes
    `bounds[i + code]` to `bounds[i + code + 1]` of that shard's column.
    """

    def __init__(
        self,
        codes: np.ndarray,
        bounds: np.ndarray,
        chunks: list[CompressedChunks],
        decode: Callable[[np.ndarray], bytes],
    ) -> None:
        self._codes = codes
        self._bounds = bounds
        self._chunks = chunks  # per shard
        self._decode = decode
        self._decoded: OrderedDict[tuple[int, int], bytes] = OrderedDict()

    def __len__(self) -> int:
        return int(self._codes.size)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"text {i} out of range for {len(self)} texts")
        i = i % len(self)
        code = self._codes.item(i)
        start, end = self._bounds.item(i + code), self._bounds.item(i + code + 1)
        if start == end:
            return ""
        size = self._chunks[code].values_per_chunk
        first, last = start // size, (end - 1) // size
        pieces = b"".join(self._chunk(code, k) for k in range(first, last + 1))
        return pieces[start - first * size : end - first * size].decode()

    def _chunk(self, code: int, k: int) -> bytes:
        """A decoded chunk; the last few are kept, since neighbouring texts share them."""
        key = (code, k)
        data = self._decoded.get(key)
        if data is None:
            data = self._decode(self._chunks[code].chunk(k))
            self._decoded[key] = data
            if len(self._decoded) > 8:
                self._decoded.popitem(last=False)
        return data

    def __iter__(self) -> Iterator[str]:
        counts = np.bincount(self._codes, minlength=len(self._chunks)).tolist()  # codes run in shard order
        position = 0
        for code, (chunks, count) in enumerate(zip(self._chunks, counts, strict=True)):
            raw = b"".join(self._decode(chunks.chunk(k)) for k in range(len(chunks)))
            bounds = self._bounds[position + code : position + code + count + 1].tolist()
            for start, end in zip(bounds[:-1], bounds[1:], strict=True):
                yield raw[start:end].decode()
            position += count

    def __eq__(self, other: object) -> bool:
        """Equal to any list, tuple or column of the same strings (as the list it replaces was)."""
        if isinstance(other, TextColumn | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-sequence semantics, like the list it replaces

    def __add__(self, other: Sequence[str]) -> list[str]:
        return [*self, *other]

    def __radd__(self, other: Sequence[str]) -> list[str]:
        return [*other, *self]
