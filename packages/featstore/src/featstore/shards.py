"""Reading a tar shard once, front to back, straight from its compressed file (local or remote).

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

from featstore.storage import Location


class UnreadableShard(Exception):
    """The tar stream itself is broken: what came before it is kept, the shard is not complete."""


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    data: bytes | None  # None when the member is larger than the caller's limit


def iter_members(shard: Location, max_bytes: int) -> Iterator[Member]:
    """Yield every regular file in the tar at `shard` (local or remote), in stored order."""
    try:
        with shard.open("rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                if info.size > max_bytes:
                    yield Member(info.name, info.size, None)
                    continue
                member = tar.extractfile(info)
                assert member is not None
                yield Member(info.name, info.size, member.read())
    except (tarfile.TarError, lzma.LZMAError, zlib.error, EOFError, OSError) as error:
        raise UnreadableShard(f"{shard.name}: unreadable tar ({str(error) or type(error).__name__})") from None
