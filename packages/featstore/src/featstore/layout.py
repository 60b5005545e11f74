"""The store format (a public contract, documented in docs/FORMAT.md): what is where, and
the writer that fills one shard group.

    feats.zarr/                     root group, attrs["featstore"]: format, settings, sources
      shards/<shard>/               one group per source shard, written by exactly one task
        b00 ... bNN                 int16 audio of one duration bucket, 1-D, Blosc-compressed
      index/                        attrs["featstore_index"]: consolidated index (completed shards)

A shard group's attrs["featstore_shard"] says "writing" until the task is done; the task then
replaces it, in one write, with the shard's index rows, rejects and checksum. The consolidated
index is likewise one object, rewritten whole when a shard completes, so a reader sees a shard
completely or not at all.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.sync import sync

from featstore.audio import SAMPLE_RATE, QuantizedClip, SourceLevels
from featstore.errors import FeatstoreError
from featstore.storage import Location, dump_json

FORMAT_NAME = "featstore"
FORMAT_VERSION = 1
ROOT_KEY = "featstore"
SHARD_KEY = "featstore_shard"
INDEX_KEY = "featstore_index"
SHARDS_GROUP = "shards"
INDEX_GROUP = "index"
# 2**18 samples = 16.4 s: an utterance touches one or two chunks, and a chunk decodes in ~0.5 ms.
CHUNK_SAMPLES = 2**18
# Utterances are written to one array per duration bucket (0.25 s wide up to 10 s, then 0.5 s,
# then 1 s), so a length-grouped batch is a contiguous run of one array: each chunk is
# decompressed about once per epoch, and batches from one bucket pad less than 5%.
BUCKET_EDGES = tuple(
    [0.0] + [0.5 + 0.25 * i for i in range(38)] + [10.0 + 0.5 * i for i in range(20)] + [20.0 + i for i in range(11)]
)
CODEC_LEVEL = 1  # measured on 29 min of stored audio: ratio 1.84 and 171 MB/s, against 1.68 and 99 MB/s at level 3
CODEC = {"name": "blosc", "cname": "zstd", "clevel": CODEC_LEVEL, "shuffle": "bitshuffle"}
# A shard's rows carry every manifest field; the consolidated index keeps what readers need for
# every utterance (so it stays small: ~100 bytes per utterance), and `fields` stay in the shards.
ROW_COLUMNS = ("bucket", "offset", "length", "scale", "level_db", "clipping", "text", "fields")
INDEX_COLUMNS = ("shard", "bucket", "offset", "length", "scale", "level_db", "clipping", "text")


@dataclass(frozen=True)
class IngestSettings:
    """Choices that shape a store's content; a store keeps one set for all its shards."""

    min_duration: float = 0.5
    max_duration: float = 30.0
    keep_empty_text: bool = False
    alphabet: str = "abcdefghijklmnopqrstuvwxyz' "
    max_member_bytes: int = 64 * 2**20

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StoreInfo:
    """The root attributes of a store, parsed once."""

    format_version: int
    sample_rate: int
    chunk_samples: int
    bucket_edges: tuple[float, ...]
    settings: IngestSettings
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)


def bucket_of(seconds: float, edges: tuple[float, ...] = BUCKET_EDGES) -> int:
    """Index of the duration bucket holding `seconds` (the last bucket is open-ended)."""
    return max(0, int(np.searchsorted(edges, seconds, side="right")) - 1)


def bucket_array_name(bucket: int) -> str:
    return f"b{bucket:02d}"


def chunk_key(shard: str, bucket: int, chunk: int) -> str:
    """Where zarr keeps a chunk of a bucket array, relative to the store (v3 default chunk key encoding)."""
    return f"{SHARDS_GROUP}/{shard}/{bucket_array_name(bucket)}/c/{chunk}"


def root_attrs(settings: IngestSettings, package_version: str) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "sample_rate": SAMPLE_RATE,
        "dtype": "int16",
        "normalization": (
            "zero mean, unit variance per utterance (Wav2Vec2FeatureExtractor do_normalize=True, epsilon 1e-7); "
            "value = int16 * scale"
        ),
        "codec": CODEC,
        "chunk_samples": CHUNK_SAMPLES,
        "bucket_edges": list(BUCKET_EDGES),
        "settings": settings.to_json(),
        "package_version": package_version,
        "sources": {},
    }


class IncompleteSettings(FeatstoreError):
    """The root's settings are missing or incomplete: a re-run of the ingest restates them."""


def create_store(store: Location, settings: IngestSettings, package_version: str) -> None:
    """Create an empty store: built beside `store`, then moved into place (atomic on local disks).

    When another writer creates the same store first, its store is kept and this one dropped.
    """
    partial = build_empty_store(store, settings, package_version)
    try:
        partial.move_to(store)
    except OSError:
        partial.remove()
        if not store.exists():
            raise


def build_empty_store(store: Location, settings: IngestSettings, package_version: str) -> Location:
    """An empty store beside `store`, not yet in place; the caller moves it there."""
    partial = store.sibling_for_writing()
    try:
        root = zarr.open_group(partial.url, mode="w")
        root.create_group(SHARDS_GROUP)
        set_attribute(root.create_group(INDEX_GROUP), INDEX_KEY, empty_index())
        set_attribute(root, ROOT_KEY, root_attrs(settings, package_version))
    except BaseException:  # a full disk, say: leave nothing half built behind
        if partial.exists():
            partial.remove()
        raise
    return partial


def set_attribute(group: zarr.Group, key: str, value: Any) -> None:
    """Write one attribute, refusing what is not strict JSON (zarr itself would write bare NaN)."""
    dump_json(value)
    group.attrs[key] = value


def is_store(store: Location) -> bool:
    """Whether the root metadata proves `store` a featstore store (of any version)."""
    try:
        meta = json.loads(store.child("zarr.json").read_bytes())
    except (OSError, ValueError):
        return False
    featstore = meta.get("attributes", {}).get(ROOT_KEY) if isinstance(meta, dict) else None
    return isinstance(featstore, dict) and featstore.get("format") == FORMAT_NAME


def open_root(store: Location, mode: str = "r") -> tuple[zarr.Group, StoreInfo]:
    """Open a store's root group and check that it is a featstore store of our version."""
    if not store.exists():
        raise FeatstoreError(f"{store.url}: no such store")
    try:
        root = zarr.open_group(store.url, mode=mode)  # type: ignore[arg-type]
        meta = root.attrs.get(ROOT_KEY)
    except (FileNotFoundError, ValueError, KeyError, TypeError, zarr.errors.NodeTypeValidationError) as error:
        raise FeatstoreError(f"{store.url}: not a featstore store ({type(error).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise FeatstoreError(f"{store.url}: not a featstore store (no '{ROOT_KEY}' attributes)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise FeatstoreError(
            f"{store.url}: store format version {meta.get('format_version')} is not supported by this "
            f"featstore (format {FORMAT_VERSION}); re-ingest with --overwrite or use a matching featstore"
        )
    info = StoreInfo(  # the constants of format 1 are known even when their copy in the store is lost
        format_version=meta["format_version"],
        sample_rate=meta.get("sample_rate", SAMPLE_RATE),
        chunk_samples=meta.get("chunk_samples", CHUNK_SAMPLES),
        bucket_edges=tuple(meta.get("bucket_edges", BUCKET_EDGES)),
        settings=_parse_settings(store, meta.get("settings")),
        sources=dict(meta.get("sources") or {}),
    )
    return root, info


def _parse_settings(store: Location, settings: Any) -> IngestSettings:
    expected = set(IngestSettings().to_json())
    missing = sorted(expected - set(settings)) if isinstance(settings, dict) else sorted(expected)
    if missing or not isinstance(settings, dict):
        raise IncompleteSettings(
            f"{store.url}: the store's settings lack {', '.join(missing) or 'valid values'}; "
            "re-run its ingest with the original options to restore them"
        )
    try:
        return IngestSettings(**{key: settings[key] for key in expected})
    except TypeError as error:
        raise IncompleteSettings(f"{store.url}: unreadable settings ({error})") from None


def restore_settings(root: zarr.Group, settings: IngestSettings, package_version: str) -> None:
    """Rewrite the root attributes around this run's settings, keeping the recorded sources."""
    meta = root.attrs.get(ROOT_KEY)
    sources = meta.get("sources") if isinstance(meta, dict) else None
    set_attribute(root, ROOT_KEY, {**root_attrs(settings, package_version), "sources": sources or {}})


def record_sources(root: zarr.Group, sources: dict[str, dict[str, Any]]) -> None:
    meta: dict[str, Any] = dict(root.attrs[ROOT_KEY])  # type: ignore[arg-type]
    meta["sources"] = {**(meta.get("sources") or {}), **sources}
    set_attribute(root, ROOT_KEY, meta)


def empty_index() -> dict[str, Any]:
    return {"shards": [], "checksums": {}, "rejects": [], **{column: [] for column in INDEX_COLUMNS}}


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
        self.rows: list[dict[str, Any]] = []
        self.rejects: list[dict[str, Any]] = []
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
        self.rows.append(row)

    def reject(self, audio_filepath: str, reason: str, detail: str = "") -> None:
        self.rejects.append({"audio_filepath": audio_filepath, "reason": reason, "detail": detail})

    def finish(self) -> dict[str, Any]:
        """Flush the partial chunks, describe each bucket array, and mark the shard complete."""
        for bucket in sorted(self._buffers):
            self._flush(bucket)
            self.group.create_array(
                bucket_array_name(bucket),
                shape=(self._written[bucket],),
                chunks=(CHUNK_SAMPLES,),
                dtype="int16",
                fill_value=0,
                compressors=[BloscCodec(cname="zstd", clevel=CODEC_LEVEL, shuffle="bitshuffle")],
            )
        summary = {
            "status": "complete",
            "source": self.source,
            "checksum": "sha256:" + self._checksum.hexdigest(),
            "clips": len(self.rows),
            "samples": int(sum(row["length"] for row in self.rows)),
            "rows": {column: [row[column] for row in self.rows] for column in ROW_COLUMNS},
            "rejects": self.rejects,
        }
        set_attribute(self.group, SHARD_KEY, summary)
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


def chunk_codec() -> numcodecs.Blosc:
    """The Blosc codec of the bucket arrays (CODEC), for reading and writing chunks directly."""
    return numcodecs.Blosc(cname="zstd", clevel=CODEC_LEVEL, shuffle=numcodecs.Blosc.BITSHUFFLE)


def hash_utterance(digest: Any, samples: np.ndarray, row: dict[str, Any]) -> None:
    """Feed one utterance into a shard checksum: its int16 bytes, then its row as sorted-key JSON."""
    digest.update(np.ascontiguousarray(samples).data)
    digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())


def shard_summary(root: zarr.Group, shard: str) -> dict[str, Any] | None:
    """The shard group's attributes, or None when the shard was never started."""
    try:
        summary = root[f"{SHARDS_GROUP}/{shard}"].attrs.get(SHARD_KEY)
    except (KeyError, ValueError, TypeError):  # never started, or its metadata lost or garbled: not complete
        return None
    return dict(summary) if isinstance(summary, dict) else None


def is_complete(summary: dict[str, Any] | None, source: dict[str, Any]) -> bool:
    """A shard is done when its group says so and was made from the same source file."""
    return bool(
        summary and summary.get("status") == "complete" and summary.get("source", {}).get("size") == source.get("size")
    )


def consolidate_index(
    root: zarr.Group, global_rejects: list[dict[str, Any]], seen: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Rebuild the consolidated index from every complete shard, in shard order, and write it whole.

    `seen` caches the compact part of shards already found complete, so that a long ingest does
    not re-read every finished shard each time another one completes.
    """
    seen = {} if seen is None else seen
    shards_group = root[SHARDS_GROUP]
    assert isinstance(shards_group, zarr.Group)
    index = empty_index()
    index["rejects"] = list(global_rejects)
    names = sorted(shard_group_names(shards_group), key=natural_key)
    for shard in names:
        if shard not in seen:
            summary = shard_summary(root, shard)
            if not summary or summary.get("status") != "complete":
                continue
            seen[shard] = _compact(summary)
        compact = seen[shard]
        code = len(index["shards"])
        index["shards"].append(shard)
        index["checksums"][shard] = compact["checksum"]
        index["shard"].extend([code] * len(compact["text"]))
        for column in INDEX_COLUMNS[1:]:
            index[column].extend(compact[column])
        index["rejects"].extend({"shard": shard, **reject} for reject in compact["rejects"])
    set_attribute(_index_group(root), INDEX_KEY, index)
    return index


def shard_group_names(shards_group: zarr.Group) -> list[str]:
    """The shard groups zarr can open; one being created, or whose metadata is lost, is left out."""
    with warnings.catch_warnings():  # a shard group being created right now is not a group yet: skip it quietly
        warnings.filterwarnings("ignore", category=UserWarning, module="zarr")
        try:
            return list(shards_group.group_keys())
        except (ValueError, TypeError):  # a garbled zarr.json among them: look at each one alone
            return [name for name in _child_names(shards_group) if _is_group(shards_group, name)]


def stored_shard_names(root: zarr.Group) -> list[str]:
    """Every entry under shards/, whether or not zarr can open it as a group."""
    shards = root[SHARDS_GROUP]
    assert isinstance(shards, zarr.Group)
    return sorted((name for name in _child_names(shards) if name != "zarr.json"), key=natural_key)


def _child_names(group: zarr.Group) -> list[str]:
    async def collect() -> list[str]:
        return [name async for name in group.store.list_dir(group.path)]

    return sync(collect())


def _is_group(parent: zarr.Group, name: str) -> bool:
    try:
        return isinstance(parent[name], zarr.Group)
    except (KeyError, ValueError, TypeError):
        return False


def _index_group(root: zarr.Group) -> zarr.Group:
    """The index group, recreated (it holds nothing but its attributes) when its metadata is lost or garbled."""
    try:
        group = root[INDEX_GROUP]
        if isinstance(group, zarr.Group):
            return group
    except (KeyError, ValueError, TypeError):
        pass
    return root.create_group(INDEX_GROUP, overwrite=True)


def _compact(summary: dict[str, Any]) -> dict[str, Any]:
    rows = summary["rows"]
    return {"checksum": summary["checksum"], "rejects": summary["rejects"], **{c: rows[c] for c in INDEX_COLUMNS[1:]}}


def read_index(root: zarr.Group) -> dict[str, Any]:
    try:
        index = root[INDEX_GROUP].attrs.get(INDEX_KEY)
    except (KeyError, ValueError, TypeError):  # index/zarr.json deleted or garbled
        index = None
    if not isinstance(index, dict):
        raise FeatstoreError(
            "the store's index is missing or unreadable; "
            "run `featstore repair STORE`, or re-run the ingest, to rebuild it"
        )
    missing = [column for column in INDEX_COLUMNS if column not in index]
    if missing:
        raise FeatstoreError(
            f"store index lacks {', '.join(missing)}: written by an older featstore; re-ingest with --overwrite"
        )
    return index


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort 'audio_2' before 'audio_10'."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))
