"""The bucket arrays on disk: duration buckets, chunk size, codec and chunk key, defined once.

The writer and the reader bypass zarr's generic chunk path (it costs ~20% of the ingest and
three times the reader's per-chunk work), so both take the chunk key and the codec from here,
and the zarr array metadata the writer declares is built from the same definition.
"""

from __future__ import annotations

from typing import Any, Literal

import numcodecs
import numpy as np
from zarr.codecs import BloscCodec

SHARDS_GROUP = "shards"
# 2**18 samples = 16.4 s: an utterance touches one or two chunks, and a chunk decodes in ~0.5 ms.
CHUNK_SAMPLES = 2**18
# Utterances are written to one array per duration bucket (0.25 s wide up to 10 s, then 0.5 s,
# then 1 s), so a length-grouped batch is a contiguous run of one array: each chunk is
# decompressed about once per epoch, and batches from one bucket pad less than 5%.
BUCKET_EDGES = tuple(
    [0.0] + [0.5 + 0.25 * i for i in range(38)] + [10.0 + 0.5 * i for i in range(20)] + [20.0 + i for i in range(11)]
)
CODEC_LEVEL = 1  # measured on 29 min of stored audio: ratio 1.84 and 171 MB/s, against 1.68 and 99 MB/s at level 3
# One Blosc block per audio chunk: zstd then sees the whole chunk, which made it 1-14% smaller and
# 1.5-2x faster to decode and 1.3-1.6x faster to encode than Blosc's automatic block size
# (bench/codecs.py, docs/CODECS.md). A Blosc frame records its block size, so any reader decodes it.
CODEC_BLOCK_BYTES = CHUNK_SAMPLES * 2
CODEC: dict[str, Any] = {
    "name": "blosc",
    "cname": "zstd",
    "clevel": CODEC_LEVEL,
    "shuffle": "bitshuffle",
    "blocksize": CODEC_BLOCK_BYTES,
}


def bucket_of(seconds: float, edges: tuple[float, ...] = BUCKET_EDGES) -> int:
    """Index of the duration bucket holding `seconds` (the last bucket is open-ended)."""
    return max(0, int(np.searchsorted(edges, seconds, side="right")) - 1)


def bucket_array_name(bucket: int) -> str:
    return f"b{bucket:02d}"


def chunk_key(shard: str, bucket: int, chunk: int) -> str:
    """Where zarr keeps a chunk of a bucket array, relative to the store."""
    return array_chunk_key(shard, bucket_array_name(bucket), chunk)


def array_chunk_key(shard: str, array: str, chunk: int) -> str:
    """Where zarr keeps a chunk of any array of a shard group (v3 default chunk key encoding)."""
    return f"{SHARDS_GROUP}/{shard}/{array}/c/{chunk}"


def chunk_codec() -> numcodecs.Blosc:
    """CODEC as numcodecs, to encode and decode chunk files directly."""
    return numcodecs.Blosc(
        cname=CODEC["cname"], clevel=CODEC["clevel"], shuffle=numcodecs.Blosc.BITSHUFFLE, blocksize=CODEC_BLOCK_BYTES
    )


def array_codec(shuffle: Literal["noshuffle"] | None = None) -> BloscCodec:
    """CODEC as zarr declares it in an array's metadata (so other readers decode the same bytes).

    UTF-8 columns pass shuffle "noshuffle": bit-shuffling text costs half its compression.
    Blosc records the shuffle in each chunk's header, so one decoder reads both.
    """
    return BloscCodec(
        cname=CODEC["cname"], clevel=CODEC["clevel"], shuffle=shuffle or CODEC["shuffle"], blocksize=CODEC_BLOCK_BYTES
    )
