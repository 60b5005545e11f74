"""Skipping a tar member too large to be a clip: featstore against tarfile's stream mode.

Writes a tar.xz holding one member of zeros (`--mb` MiB; xz stores it in a few KB, as in an xz
bomb) and one small member after it, then times, in the same run:
  (a) decompression alone: the whole file read through lzma in 1 MiB reads (the floor);
  (b) featstore.shards.iter_members with a limit below the big member: it must be skipped and
      the small member after it read;
  (c) tarfile's stream mode ("r|*"), iterating past the big member without extracting it, as
      featstore did before (TRAPS.md: it reads 10 KB at a time, copying its buffer each time).
Prints one JSON line with the seconds of each and (b)/(a), (c)/(a).

    python bench/skip_member.py --mb 64
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from featstore.shards import iter_members
from featstore.storage import locate

MIB = 2**20


def write_bomb(path: Path, megabytes: int) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (("big.webm", bytes(megabytes * MIB)), ("after.webm", b"after")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(lzma.compress(buffer.getvalue(), preset=0))


def decompress_only(path: Path) -> None:
    with lzma.open(path) as stream:
        while stream.read(MIB):
            pass


def featstore_skip(path: Path) -> None:
    members = list(iter_members(locate(path), max_bytes=MIB))
    assert [(m.name, m.data) for m in members] == [("big.webm", None), ("after.webm", b"after")]


def tarfile_stream_skip(path: Path) -> None:
    with tarfile.open(path, mode="r|*") as tar:
        for info in tar:
            if info.name == "after.webm":
                member = tar.extractfile(info)
                assert member is not None and member.read() == b"after"


def timed(run: Callable[[Path], None], path: Path) -> float:
    started = time.perf_counter()
    run(path)
    return round(time.perf_counter() - started, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=64, help="size of the member to skip, in MiB")
    parser.add_argument("--skip-tarfile", action="store_true", help="leave out (c): its time grows as --mb squared")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "audio_0.tar.xz"
        write_bomb(path, args.mb)
        result: dict[str, float | int] = {"member_mib": args.mb, "compressed_bytes": path.stat().st_size}
        result["decompress_s"] = timed(decompress_only, path)
        result["featstore_skip_s"] = timed(featstore_skip, path)
        if not args.skip_tarfile:
            result["tarfile_stream_skip_s"] = timed(tarfile_stream_skip, path)
    floor = max(float(result["decompress_s"]), 1e-3)
    result["featstore_vs_decompress"] = round(float(result["featstore_skip_s"]) / floor, 2)
    if "tarfile_stream_skip_s" in result:
        result["tarfile_vs_decompress"] = round(float(result["tarfile_stream_skip_s"]) / floor, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
