"""Reading a tar shard once, front to back, straight from its compressed file (local or remote).

The shard is decompressed sequentially and never seeks back, so a 2 GB tar.xz is read exactly
once and nothing is extracted to disk. Two things `tarfile`'s own stream mode ("r|*") gets
wrong are done here instead (TRAPS.md):
- it takes a damaged header in the middle of a shard for the end of the archive, silently. So
  after the last member, everything up to the end of the decompressed stream must be the zero
  blocks that end a tar, and the compressed stream must end with its end marker and checksum;
  otherwise the shard is unreadable, with the decompressed byte offset of the damage;
- it skips a member it is not asked to read in 10 KB pieces, copying its buffer each time
  (64 MB took ~2 minutes). Here a member too large to be a clip is skipped in 1 MiB reads, at
  decompression speed, without being held in memory.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from featstore.sources import printable
from featstore.storage import Location

SKIP_BLOCK = 1 << 20
MAGIC_BYTES = 6
XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"


class UnreadableShard(Exception):
    """The tar stream itself is broken: what came before it is kept, the shard is not complete."""


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    data: bytes | None  # None when the member is larger than the caller's limit


class _Prefixed(io.RawIOBase):
    """A stream whose first bytes were already read (to tell its compression), read again first."""

    def __init__(self, head: bytes, rest: IO[Any]) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return bytes(self._rest.read(size))
        cut = len(self._head) if size < 0 else size
        head, self._head = self._head[:cut], self._head[cut:]
        return head


class _Forward(io.RawIOBase):
    """The decompressed tar bytes, read forward only; `seek` skips ahead in big reads.

    Keeps the bytes of its last read, so that the header block `tarfile` stopped at can be
    looked at again.
    """

    def __init__(self, decompressed: io.BufferedIOBase) -> None:
        self._source = decompressed
        self.position = 0
        self._last = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.position += len(data)
        self._last = data
        return data

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or position < self.position:
            raise OSError(f"cannot seek back to {position} in a forward-only stream at {self.position}")
        while self.position < position and self.read(min(SKIP_BLOCK, position - self.position)):
            pass
        return self.position

    def since(self, position: int) -> bytes:
        """The bytes from `position` to here, which must lie within the last read."""
        return self._last[len(self._last) - (self.position - position) :] if position < self.position else b""


def _decompressed(stream: IO[Any]) -> io.BufferedIOBase:
    """The tar bytes of a plain, xz, gzip or bzip2 shard, told by its first bytes, not its name."""
    head = bytes(stream.read(MAGIC_BYTES))
    source = io.BufferedReader(_Prefixed(head, stream))
    if head.startswith(XZ_MAGIC):
        return lzma.LZMAFile(source)
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=source)
    if head.startswith(BZIP2_MAGIC):
        return bz2.BZ2File(source)
    return source


def iter_members(shard: Location, max_bytes: int) -> Iterator[Member]:
    """Yield every regular file in the tar at `shard` (local or remote), in stored order.

    Raises UnreadableShard, naming the decompressed byte offset, when the shard is damaged
    anywhere, including after its last member.
    """
    forward: _Forward | None = None
    try:
        with shard.open("rb") as stream:
            forward = _Forward(_decompressed(stream))
            with _open_tar(forward, shard.name) as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    name = printable(info.name)  # tarfile keeps non-UTF-8 bytes as lone surrogates
                    if info.size > max_bytes:
                        yield Member(name, info.size, None)  # skipped by the next header's seek
                        continue
                    member = tar.extractfile(info)
                    assert member is not None
                    yield Member(name, info.size, member.read())
                _check_end(forward, tar.offset, shard.name)
    except UnreadableShard:
        raise
    except (tarfile.TarError, lzma.LZMAError, zlib.error, EOFError, OSError) as error:
        where = f" after decompressed tar byte {forward.position}" if forward else ""
        detail = str(error) or type(error).__name__
        raise UnreadableShard(f"{shard.name}: unreadable tar{where} ({detail})") from None


def _open_tar(forward: _Forward, shard: str) -> tarfile.TarFile:
    """The tar reader, which reads the first header at once: say so when that one is bad."""
    try:
        return tarfile.TarFile(fileobj=forward, mode="r")
    except tarfile.ReadError as error:
        raise UnreadableShard(f"{shard}: invalid tar header at decompressed tar byte 0 ({error})") from None


def _check_end(forward: _Forward, offset: int, shard: str) -> None:
    """Everything from where `tarfile` stopped to the end of the stream must be zero blocks.

    Reading to the end also makes the decompressor check the compressed stream's end marker and
    checksum (a cut-off or corrupt .xz/.gz raises here).
    """
    block = forward.since(offset)
    block += forward.read(tarfile.BLOCKSIZE - len(block))
    if block.count(0) != len(block):
        raise UnreadableShard(
            f"{shard}: invalid tar header at decompressed tar byte {offset} ({_header_problem(block)})"
        )
    if not block:
        raise UnreadableShard(f"{shard}: tar ends at decompressed tar byte {offset} without its end-of-archive blocks")
    while chunk := forward.read(SKIP_BLOCK):
        if chunk.count(0) != len(chunk):
            first = forward.position - len(chunk.lstrip(b"\0"))
            raise UnreadableShard(f"{shard}: data after the end of the tar, at decompressed tar byte {first}")


def _header_problem(block: bytes) -> str:
    """Why `tarfile` could not read this header block."""
    try:
        tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError as error:
        return str(error)
    return "unreadable header"
