"""Texts as Zarr variable-length strings against UTF-8 bytes plus offsets (format 2's choice).

    python bench/text_columns.py [--texts 100000]

Writes the same generated transcripts both ways with the store's codec, reads them back, and
prints time, bytes on disk, and what a reader holds in memory (an estimate for the str objects:
sys.getsizeof of each plus the object array's pointers).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from featstore.chunks import array_codec
from featstore.columns import pack_utf8

WORDS = ["umwana", "amazi", "inzu", "igiti", "kandi", "ndetse", "cyane", "ejo", "uyu", "munsi"]


def disk_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def write(folder: Path, name: str, values: np.ndarray, dtype: object) -> None:
    array = zarr.create_array(
        str(folder / name), shape=values.shape, chunks=values.shape, dtype=dtype, compressors=[array_codec()]
    )
    array[:] = values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=100_000)
    count = parser.parse_args().texts
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, rng.integers(3, 12))) for _ in range(count)]
    with tempfile.TemporaryDirectory() as temporary:
        vlen, packed = Path(temporary, "vlen"), Path(temporary, "packed")
        started = time.perf_counter()
        write(vlen, "text", np.array(texts, dtype=object), str)
        vlen_write = time.perf_counter() - started
        started = time.perf_counter()
        back = zarr.open_array(str(vlen / "text"))[:]
        vlen_read = time.perf_counter() - started
        vlen_memory = back.nbytes + sum(sys.getsizeof(text) for text in back)
        started = time.perf_counter()
        data, offsets = pack_utf8(texts)
        write(packed, "text", data, data.dtype)
        write(packed, "text_offsets", offsets, offsets.dtype)
        packed_write = time.perf_counter() - started
        started = time.perf_counter()
        data = zarr.open_array(str(packed / "text"))[:]
        offsets = zarr.open_array(str(packed / "text_offsets"))[:]
        packed_read = time.perf_counter() - started
        print(f"{count} texts      write s  read s  disk MB  reader memory MB")
        vlen_disk = disk_bytes(vlen)
        print(f"vlen-utf8      {vlen_write:7.3f} {vlen_read:7.3f} {vlen_disk / 1e6:8.2f} {vlen_memory / 1e6:8.2f}")
        print(
            f"bytes+offsets  {packed_write:7.3f} {packed_read:7.3f} {disk_bytes(packed) / 1e6:8.2f} "
            f"{(data.nbytes + offsets.nbytes) / 1e6:8.2f}"
        )


if __name__ == "__main__":
    main()
