"""Bare decode rate: the practical limit of ingest on this machine.

Reads every audio_*.tar.xz under a corpus directory once, sequentially (streaming tar mode),
and decodes, resamples to 16 kHz and normalizes each clip with featstore's own functions,
storing nothing. Shards are spread over `--processes` worker processes, as ingest spreads them
over its Dask workers. Prints one JSON line: clips, audio seconds, wall seconds.

    python bench/bare_decode.py CORPUS_DIR --processes 2
"""

from __future__ import annotations

import argparse
import json
import tarfile
import time
from multiprocessing import Pool
from pathlib import Path

from featstore.audio import SAMPLE_RATE, DecodeError, decode_clip, normalize


def decode_shard(path: Path) -> tuple[int, float, int]:
    """(clips decoded, audio seconds, clips that failed to decode) of one shard."""
    clips, samples, failed = 0, 0, 0
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".webm"):
                continue
            stream = tar.extractfile(member)
            assert stream is not None
            try:
                audio = normalize(decode_clip(stream.read()))
            except DecodeError:
                failed += 1
                continue
            clips += 1
            samples += audio.size
    return clips, samples / SAMPLE_RATE, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--max-shards", type=int, default=None)
    args = parser.parse_args()
    shards = sorted(args.corpus.rglob("audio_*.tar*"), key=lambda p: int(p.name.split("_")[1].split(".")[0]))
    shards = shards[: args.max_shards] if args.max_shards else shards
    started = time.perf_counter()
    with Pool(args.processes) as pool:
        results = pool.map(decode_shard, shards, chunksize=1)
    wall = time.perf_counter() - started
    clips, seconds, failed = (sum(r[i] for r in results) for i in range(3))
    print(
        json.dumps({"shards": len(shards), "clips": clips, "audio_s": seconds, "failed": failed, "inner_wall_s": wall})
    )


if __name__ == "__main__":
    main()
