"""Skipping a tar member too large to be a clip: featstore against tarfile's stream mode.

Writes a tar.xz holding one member of zeros (`--mb` MiB; xz stores it in a few KB, as in an xz
bomb) and one small member after it, then times, in the same run:
  (a) decompression alone: the whole file read through lzma in 1 MiB reads (the floor);
  (b) featstore.shards.iter_members with a limit below the big member: it must be skipped and
      the small member after it read;
  (c) tarfile's stream mode ("r|*"), iterating past the big member without extracting it, as
      featstore did before (TRAPS.md: it reads 10 KB at a time, copying its buffer each time).
Prints one JSON line with the seconds of each and (b)/(a), (c)/(a).

With `--corpus DIR`, also the ordinary path: every member of every shard under DIR read whole,
by featstore.shards.iter_members and by tarfile's stream mode, interleaved `--repeat` times
(best of each), so that the skip's gain is not paid for on the clips.

    python bench/skip_member.py --mb 64
    python bench/skip_member.py --mb 16 --corpus /tmp/featstore-bench/corpus_s4_c150_w6-14_seed0 --repeat 5
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
from typing import Any

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


def featstore_read_all(shards: list[Path]) -> None:
    for path in shards:
        for member in iter_members(locate(path), max_bytes=64 * MIB):
            assert member.data is not None


def tarfile_read_all(shards: list[Path]) -> None:
    for path in shards:
        with tarfile.open(path, mode="r|*") as tar:
            for info in tar:
                member = tar.extractfile(info)
                assert member is not None and len(member.read()) == info.size


def read_corpus(corpus: Path, repeat: int) -> dict[str, float | int]:
    """Best seconds of each reader over every shard of `corpus`, interleaved."""
    shards = sorted(corpus.rglob("audio_*.tar.xz"))
    runs: dict[str, list[float]] = {"featstore": [], "tarfile": []}
    for _ in range(repeat):
        runs["featstore"].append(timed(featstore_read_all, shards))
        runs["tarfile"].append(timed(tarfile_read_all, shards))
    best = {name: min(times) for name, times in runs.items()}
    return {
        "shards": len(shards),
        "read_featstore_s": best["featstore"],
        "read_tarfile_stream_s": best["tarfile"],
        "read_featstore_vs_tarfile": round(best["featstore"] / best["tarfile"], 3),
    }


def timed(run: Callable[[Any], None], path: Any) -> float:
    started = time.perf_counter()
    run(path)
    return round(time.perf_counter() - started, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=64, help="size of the member to skip, in MiB")
    parser.add_argument("--skip-tarfile", action="store_true", help="leave out (c): its time grows as --mb squared")
    parser.add_argument("--corpus", type=Path, help="also time reading every member of the shards under this folder")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of the --corpus reads (best of each)")
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
    if args.corpus:
        result |= read_corpus(args.corpus, args.repeat)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
