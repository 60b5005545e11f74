"""Where corpora and stores live: local paths, or fsspec URLs (http(s)://, s3://, gs://, hf://...).

Everything featstore reads or writes outside zarr goes through `Location`, so a remote shard is
streamed exactly like a local one. A Location holds only its URL, so it pickles cheaply to Dask
workers, which resolve the filesystem themselves. `file://` URLs become plain local paths.
"""

from __future__ import annotations

import os
import posixpath
import uuid
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

    def sibling_for_writing(self) -> Location:
        """A fresh name beside this one, to build something before moving it into place."""
        return Location(f"{self.url.rstrip('/')}.{uuid.uuid4().hex[:8]}.partial")

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


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]
