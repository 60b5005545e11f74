"""Reading a tar shard once, front to back, straight from its compressed file.

`tarfile`'s stream mode ("r|*") decompresses sequentially and never seeks, so a 2 GB
tar.xz is read exactly once, nothing is extracted to disk, and a member too large to be a
clip is skipped by its header, before any of it is read into memory.
"""

from __future__ import annotations

import lzma
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class UnreadableShard(Exception):
    """The tar stream itself is broken: what came before it is kept, the shard is not complete."""


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    data: bytes | None  # None when the member is larger than the caller's limit


def iter_members(path: Path, max_bytes: int) -> Iterator[Member]:
    """Yield every regular file in the tar at `path`, in stored order."""
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                if info.size > max_bytes:
                    yield Member(info.name, info.size, None)
                    continue
                stream = tar.extractfile(info)
                assert stream is not None
                yield Member(info.name, info.size, stream.read())
    except (tarfile.TarError, lzma.LZMAError, zlib.error, EOFError, OSError) as error:
        raise UnreadableShard(f"{path.name}: unreadable tar ({str(error) or type(error).__name__})") from None
