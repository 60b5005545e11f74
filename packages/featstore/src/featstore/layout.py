"""The store format (a public contract, documented in docs/FORMAT.md): its constants and the
root metadata that proves a directory a featstore store and records its settings and sources.

    feats.zarr/                     root group, attrs["featstore"]: format, settings, sources
      shards/<shard>/               one group per source shard (featstore.shardwriter, .shardmeta)
        b00 ... bNN                 int16 audio of one duration bucket (featstore.chunks)
      index/                        the list of complete shards (featstore.index)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import zarr

from featstore.audio import SAMPLE_RATE
from featstore.chunks import BUCKET_EDGES, CHUNK_SAMPLES, CODEC
from featstore.errors import FeatstoreError
from featstore.storage import Location, dump_json

FORMAT_NAME = "featstore"
FORMAT_VERSION = 3
MIGRATABLE_VERSIONS = (1, 2)  # `featstore migrate` converts these to FORMAT_VERSION
ROOT_KEY = "featstore"
INDEX_KEY = "featstore_index"
INDEX_GROUP = "index"


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


def open_root(store: Location, mode: str = "r", migrating: bool = False) -> tuple[zarr.Group, StoreInfo]:
    """Open a store's root group and check that it is a featstore store of our version
    (or, when `migrating`, of a version `featstore migrate` converts)."""
    if not store.exists():
        raise FeatstoreError(f"{store.url}: no such store")
    try:
        root = zarr.open_group(store.url, mode=mode)  # type: ignore[arg-type]
        meta = root.attrs.get(ROOT_KEY)
    except (FileNotFoundError, ValueError, KeyError, TypeError, zarr.errors.NodeTypeValidationError) as error:
        raise FeatstoreError(f"{store.url}: not a featstore store ({type(error).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise FeatstoreError(f"{store.url}: not a featstore store (no '{ROOT_KEY}' attributes)")
    version = meta.get("format_version")
    if version in MIGRATABLE_VERSIONS and not migrating:
        raise FeatstoreError(
            f"{store.url}: a format-{version} store; run `featstore migrate {store.url}` to convert it to format "
            f"{FORMAT_VERSION}"
        )
    if version != FORMAT_VERSION and version not in MIGRATABLE_VERSIONS:
        raise FeatstoreError(
            f"{store.url}: store format version {meta.get('format_version')} is not supported by this "
            f"featstore (format {FORMAT_VERSION}); re-ingest with --overwrite or use a matching featstore"
        )
    info = StoreInfo(  # the constants of the format are known even when their copy in the store is lost
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
