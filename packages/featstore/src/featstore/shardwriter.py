"""The writer that fills one shard group: audio per duration bucket, rows, rejects, checksum."""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any

import numpy as np
import zarr

from featstore.audio import SAMPLE_RATE, QuantizedClip, SourceLevels
from featstore.chunks import (
    CHUNK_SAMPLES,
    SHARDS_GROUP,
    array_codec,
    bucket_array_name,
    bucket_of,
    chunk_codec,
    chunk_key,
)
from featstore.columns import write_columns
from featstore.layout import set_attribute
from featstore.shardmeta import ROW_COLUMNS, SHARD_KEY, Reject, ShardSummary
from featstore.storage import Location


class ShardWriter:
    """Writes one shard group: audio appended per duration bucket, one chunk buffer per bucket.

    Memory is bounded by the bucket buffers (at most len(BUCKET_EDGES) chunks of int16),
    whatever the size of the shard. Full chunks are compressed and written straight to their
    files (zarr's generic write path cost ~20% of the decoding time); each bucket array's
    metadata is written once, at the end, with its final length.
    """

    def __init__(self, store: Location, root: zarr.Group, shard: str, source: dict[str, Any]) -> None:
        shards = root[SHARDS_GROUP]
        assert isinstance(shards, zarr.Group)
        self._fs, root_path = store.filesystem()
        self._root_path = root_path.rstrip("/")
        # Whatever an earlier attempt left, even a group whose zarr.json is gone, goes first.
        leftover = f"{self._root_path}/{SHARDS_GROUP}/{shard}"
        if self._fs.exists(leftover):
            self._fs.rm(leftover, recursive=True)
        self.group = shards.create_group(shard)
        set_attribute(self.group, SHARD_KEY, {"status": "writing", "source": source})
        self.shard = shard
        self.source = source
        self.columns: dict[str, list[Any]] = {column: [] for column in ROW_COLUMNS}
        self.rejects: list[Reject] = []
        self._codec = chunk_codec()
        self._buffers: dict[int, np.ndarray] = {}
        self._filled: dict[int, int] = {}
        self._written: dict[int, int] = {}
        self._checksum = hashlib.sha256()

    def add(self, clip: QuantizedClip, levels: SourceLevels, text: str, fields: dict[str, Any]) -> None:
        """Append one normalized utterance and its index row."""
        bucket = bucket_of(clip.samples.size / SAMPLE_RATE)
        offset = self._written.get(bucket, 0) + self._filled.get(bucket, 0)
        self._append_samples(bucket, clip.samples)
        row = {
            "bucket": bucket,
            "offset": offset,
            "length": int(clip.samples.size),
            "scale": clip.scale,
            "level_db": levels.level_db,
            "clipping": levels.clipping,
            "text": text,
            "fields": fields,
        }
        hash_utterance(self._checksum, clip.samples, row)
        for column in ROW_COLUMNS:
            self.columns[column].append(row[column])

    def reject(self, audio_filepath: str, reason: str, detail: str = "") -> None:
        self.rejects.append(Reject(audio_filepath, reason, detail))

    def finish(self) -> ShardSummary:
        """Flush the partial chunks, describe each bucket array, write the row columns, mark the shard complete."""
        for bucket in sorted(self._buffers):
            self._flush(bucket)
            self.group.create_array(
                bucket_array_name(bucket),
                shape=(self._written[bucket],),
                chunks=(CHUNK_SAMPLES,),
                dtype="int16",
                fill_value=0,
                compressors=[array_codec()],
            )
        summary = ShardSummary(
            source=self.source,
            checksum="sha256:" + self._checksum.hexdigest(),
            clips=len(self.columns["length"]),
            samples=int(sum(self.columns["length"])),
            rejects=tuple(self.rejects),
        )
        write_columns(self.group, self.columns)
        set_attribute(self.group, SHARD_KEY, summary.to_json())
        return summary

    def _append_samples(self, bucket: int, samples: np.ndarray) -> None:
        buffer = self._buffers.get(bucket)
        if buffer is None:
            buffer = self._buffers[bucket] = np.empty(CHUNK_SAMPLES, dtype=np.int16)
            self._filled[bucket] = 0
            self._written[bucket] = 0
        position = 0
        while position < samples.size:
            take = min(CHUNK_SAMPLES - self._filled[bucket], samples.size - position)
            buffer[self._filled[bucket] : self._filled[bucket] + take] = samples[position : position + take]
            self._filled[bucket] += take
            position += take
            if self._filled[bucket] == CHUNK_SAMPLES:
                self._flush(bucket)

    def _flush(self, bucket: int) -> None:
        """Write the bucket's buffer as the array's next chunk (zero-padded: zarr stores edge chunks whole)."""
        filled = self._filled[bucket]
        if not filled:
            return
        buffer = self._buffers[bucket]
        buffer[filled:] = 0
        chunk = self._written[bucket] // CHUNK_SAMPLES
        path = f"{self._root_path}/{chunk_key(self.shard, bucket, chunk)}"
        if chunk == 0:
            self._fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self._fs.pipe_file(path, self._codec.encode(buffer))
        self._written[bucket] += filled
        self._filled[bucket] = 0


def hash_utterance(digest: Any, samples: np.ndarray, row: dict[str, Any]) -> None:
    """Feed one utterance into a shard checksum: its int16 bytes, then its row as sorted-key JSON."""
    digest.update(np.ascontiguousarray(samples).data)
    digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
