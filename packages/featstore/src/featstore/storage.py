"""Where corpora and stores live: local paths, or fsspec URLs (http(s)://, s3://, gs://, hf://...).

Everything featstore reads or writes outside zarr goes through `Location`, so a remote shard is
streamed exactly like a local one. A Location holds only its URL, so it pickles cheaply to Dask
workers, which resolve the filesystem themselves. `file://` URLs become plain local paths.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec

from featstore.errors import FeatstoreError

# Remote files are read sequentially in blocks of this size (S3 and GCS ranged GETs...).
STREAM_BLOCK_BYTES = 8 * 2**20
# Over HTTP a file is read as one streamed response instead: one request per file, and it works
# with servers that ignore range requests (Python's http.server does), where ranged blocks fail
# past the first one.
STREAMED_PROTOCOLS = ("http://", "https://")


@dataclass(frozen=True, order=True)
class Location:
    """A file or folder, local or remote."""

    url: str

    @property
    def is_local(self) -> bool:
        return "://" not in self.url

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.rstrip("/"))

    def filesystem(self) -> tuple[fsspec.AbstractFileSystem, str]:
        try:
            return fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as error:
            raise FeatstoreError(f"{self.url}: {_first_line(error)} (see README: remote storage extras)") from None

    def child(self, *parts: str) -> Location:
        return Location(posixpath.join(self.url.rstrip("/"), *parts))

    def exists(self) -> bool:
        fs, path = self.filesystem()
        return bool(fs.exists(path))

    def is_dir(self) -> bool:
        fs, path = self.filesystem()
        return bool(fs.isdir(path))

    def files(self) -> list[tuple[Location, int]]:
        """Every file below this folder, with its size, in sorted order."""
        fs, path = self.filesystem()
        found = fs.find(path, detail=True)
        files = [
            (name, int(info.get("size") or 0)) for name, info in found.items() if info.get("type", "file") == "file"
        ]
        return sorted((Location(name if self.is_local else fs.unstrip_protocol(name)), size) for name, size in files)

    def size(self) -> int:
        fs, path = self.filesystem()
        return int(fs.size(path) or 0)

    def open(self, mode: str = "rb") -> IO[Any]:
        """Open for sequential reading (or writing); text is UTF-8."""
        fs, path = self.filesystem()
        streamed = "r" in mode and self.url.startswith(STREAMED_PROTOCOLS)
        options: dict[str, Any] = {"block_size": 0 if streamed else STREAM_BLOCK_BYTES}
        if "b" not in mode:
            options["encoding"] = "utf-8"
        return fs.open(path, mode, **options)

    def read_bytes(self) -> bytes:
        fs, path = self.filesystem()
        return fs.cat_file(path)

    def total_bytes(self) -> int:
        fs, path = self.filesystem()
        return int(fs.du(path, total=True))

    def remove(self) -> None:
        fs, path = self.filesystem()
        fs.rm(path, recursive=True)

    @contextlib.contextmanager
    def built_aside(self) -> Iterator[Location]:
        """A fresh name beside this one, `name.<random>.partial`, to build something in before it is
        moved into place. Whatever is still there when the block ends (a build that failed, a full
        disk, Ctrl-C, or one the block chose not to move) is removed: no partial is left behind.
        """
        partial = Location(f"{self.url.rstrip('/')}.{uuid.uuid4().hex[:8]}.partial")
        try:
            yield partial
        finally:
            if partial.exists():
                partial.remove()

    def write_atomic(self, data: bytes) -> None:
        """Write the whole file or nothing: built aside, then renamed over `name`.

        A reader never sees half a file, and a write that fails (a full disk) leaves the old
        file as it was. Object stores put an object whole, so there it is one put.
        """
        if not self.is_local:
            fs, path = self.filesystem()
            fs.pipe_file(path, data)
            return
        with self.built_aside() as partial:
            Path(partial.url).write_bytes(data)
            os.replace(partial.url, self.url)

    def create_exclusive(self, data: bytes) -> bool:
        """Create the file holding `data` unless it exists; True when this call created it.

        Locally the content is written aside and hard-linked into place: link(2) fails when
        the name exists, so exactly one of several racing callers wins, and the file is never
        seen half written. Object stores have no such primitive everywhere: there it is a check
        then a put, and two writers starting at the same instant can both win (README).
        """
        if not self.is_local:
            fs, path = self.filesystem()
            if fs.exists(path):
                return False
            fs.pipe_file(path, data)
            return True
        with self.built_aside() as partial:
            Path(partial.url).write_bytes(data)
            try:
                os.link(partial.url, self.url)
            except FileExistsError:
                return False
            return True

    def identity(self) -> tuple[int, int] | None:
        """(device, inode) of a local path, which changes when the path is replaced; None for URLs."""
        if not self.is_local:
            return None
        status = os.stat(self.url)
        return status.st_dev, status.st_ino

    def overlaps(self, other: Location) -> bool:
        """Whether either location is the other or lies inside it (symbolic links resolved)."""
        if self.is_local and other.is_local:
            mine, theirs = Path(self.url).resolve(), Path(other.url).resolve()
            return mine == theirs or mine in theirs.parents or theirs in mine.parents
        mine_url, their_url = self.url.rstrip("/") + "/", other.url.rstrip("/") + "/"
        return mine_url.startswith(their_url) or their_url.startswith(mine_url)

    def move_to(self, target: Location) -> None:
        """Rename (atomic on a local disk; object stores copy then delete)."""
        if self.is_local and target.is_local:
            os.rename(self.url, target.url)
            return
        fs, path = self.filesystem()
        fs.mv(path, target.filesystem()[1], recursive=True)


def locate(url: str | Path) -> Location:
    """A Location for a user-given path or URL; local paths are made absolute."""
    text = str(url)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" in text:
        return Location(text)
    return Location(str(Path(text).absolute()))


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None, for JSON that any reader accepts."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def dump_json(value: Any) -> bytes:
    """Strict JSON: a NaN or infinity raises ValueError instead of writing what other readers refuse."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]
