"""A shard's index rows as Zarr v3 arrays in its group (format 2): one 1-D array per column.

    shards/<shard>/bucket, offset, length             int32, int64, int64
    shards/<shard>/scale, level_db, clipping          float64 (the values the checksum hashed)
    shards/<shard>/text, fields                        uint8: UTF-8 bytes, all rows end to end
    shards/<shard>/text_offsets, fields_offsets        int64, clips + 1: row i is bytes [o[i], o[i+1])

Each array is one chunk, Blosc-compressed with the store's codec, so any Zarr v3 reader
(zarr-python, tensorstore) reads them; featstore's reader reads the chunk files directly, one
file per column per shard, and keeps every column as one contiguous numpy array: no Python
object per utterance. Texts and fields are UTF-8 bytes plus offsets rather than Zarr's
variable-length strings (measured in docs/FORMAT.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np
import zarr

from featstore.chunks import array_chunk_key, array_codec, chunk_codec
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
        data, offsets = pack_utf8(values)
        _write_array(group, name, data)
        _write_array(group, f"{name}_offsets", offsets)


def _write_array(group: zarr.Group, name: str, values: np.ndarray) -> None:
    array = group.create_array(
        name,
        shape=values.shape,
        chunks=(max(1, values.size),),
        dtype=values.dtype,
        fill_value=0,
        compressors=[array_codec()],
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

    def numeric(self, shard: str, name: str, size: int) -> np.ndarray:
        return self._read(shard, name, size, NUMERIC_COLUMNS[name])

    def numeric_offsets(self, shard: str, name: str, size: int) -> np.ndarray:
        """The `size + 1` offsets of a text column of `size` rows."""
        return self._read(shard, f"{name}_offsets", size + 1, OFFSETS_DTYPE)

    def utf8(self, shard: str, name: str, size: int) -> np.ndarray:
        """The `size` UTF-8 bytes of a text column."""
        return self._read(shard, name, size, np.dtype(np.uint8))

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
            raise DamagedColumn(
                f"{shard}/{name}: column unreadable ({type(error).__name__}); run `featstore verify`"
            ) from None
        if values.size != size:
            raise DamagedColumn(f"{shard}/{name}: column holds {values.size} values, the index says {size}")
        return values


class Utf8Column(Sequence[str]):
    """Strings kept as one UTF-8 buffer plus offsets, decoded one at a time when asked for.

    A list of str would be one Python object per utterance, whose reference counts forked
    DataLoader workers touch, copying the memory pages that hold them into every worker.
    """

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        self._data = data
        self._offsets = offsets

    def __len__(self) -> int:
        return int(self._offsets.size) - 1

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
        return self._data[self._offsets[i] : self._offsets[i + 1]].tobytes().decode()

    def __iter__(self) -> Iterator[str]:
        raw = self._data.tobytes()
        bounds = self._offsets.tolist()
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            yield raw[start:end].decode()

    def __eq__(self, other: object) -> bool:
        """Equal to any list, tuple or column of the same strings (as the list it replaces was)."""
        if isinstance(other, Utf8Column | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-sequence semantics, like the list it replaces

    def __add__(self, other: Sequence[str]) -> list[str]:
        return [*self, *other]

    def __radd__(self, other: Sequence[str]) -> list[str]:
        return [*other, *self]
