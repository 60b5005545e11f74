"""Finding a corpus's shards and manifests, choosing shards, and reading manifest records.

A split directory in the real layout (`manifest_*.json` beside `audio_shards/audio_*.tar.xz`),
or any directory holding such files at any depth, local or remote (see `storage`). A shard's id
is the number that ends its file name (`audio_7.tar.xz` -> 7); a record's `shard_id` names the
shard holding its clip.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from featstore.errors import FeatstoreError
from featstore.storage import Location

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class ShardSource:
    """One tar shard, local or remote."""

    shard_id: int
    location: Location
    size: int

    @property
    def name(self) -> str:
        """The shard's group name in the store: the file name without its tar suffixes."""
        return _strip_suffix(self.location.name)

    def describe(self) -> dict[str, Any]:
        return {"path": self.location.url, "file": self.location.name, "size": self.size, "shard_id": self.shard_id}


@dataclass(frozen=True)
class Corpus:
    shards: tuple[ShardSource, ...]
    manifests: tuple[Location, ...]


@dataclass(frozen=True)
class ManifestLine:
    """One manifest line: a parsed record, or the reason it could not be parsed."""

    source: str  # "manifest_3.json:17"
    record: dict[str, Any] | None
    error: str = ""


def discover(root: Location) -> Corpus:
    """Find every tar shard and manifest below `root`."""
    if not root.exists():
        raise FeatstoreError(f"{root.url}: no such file or directory")
    if not root.is_dir():
        raise FeatstoreError(f"{root.url}: expected a split directory holding manifests and tar shards")
    files = root.files()
    shards: dict[int, ShardSource] = {}
    for location, size in files:
        if not location.name.endswith(SHARD_SUFFIXES) or "image" in location.url.rsplit("/", 2)[-2]:
            continue  # prompt-image shards of the real layout are not audio
        match = _TRAILING_NUMBER.search(_strip_suffix(location.name))
        if not match:
            raise FeatstoreError(f"{location.url}: a shard's file name must end with its number (like audio_3.tar.xz)")
        shard_id = int(match.group(1))
        if shard_id in shards:
            raise FeatstoreError(f"two shards numbered {shard_id}: {shards[shard_id].location.url} and {location.url}")
        shards[shard_id] = ShardSource(shard_id, location, size or location.size())  # HTTP listings carry no sizes
    manifests = tuple(
        sorted((loc for loc, _ in files if loc.name.startswith("manifest") and ".json" in loc.name), key=_number_key)
    )
    if not shards:
        raise FeatstoreError(f"{root.url}: no tar shards found (looked for {', '.join(SHARD_SUFFIXES)})")
    if not manifests:
        raise FeatstoreError(f"{root.url}: no manifests found (looked for manifest*.json)")
    return Corpus(shards=tuple(shards[i] for i in sorted(shards)), manifests=manifests)


def parse_shard_selection(text: str) -> set[int]:
    """'0,3,5-9' -> {0, 3, 5, 6, 7, 8, 9}."""
    chosen: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise FeatstoreError(f"--shards: cannot read '{part}' (expected numbers and ranges like 0,3,5-9)")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise FeatstoreError(f"--shards: range '{part}' runs backwards")
        chosen.update(range(first, last + 1))
    return chosen


def select_shards(corpus: Corpus, selection: set[int] | None, max_shards: int | None) -> tuple[ShardSource, ...]:
    shards = corpus.shards
    if selection is not None:
        missing = sorted(selection - {s.shard_id for s in shards})
        if missing:
            raise FeatstoreError(f"--shards: no shard numbered {', '.join(map(str, missing))} in the input")
        shards = tuple(s for s in shards if s.shard_id in selection)
    if max_shards is not None:
        shards = shards[:max_shards]
    if not shards:
        raise FeatstoreError("no shards selected")
    return shards


def iter_manifest_lines(manifests: tuple[Location, ...]) -> Iterator[ManifestLine]:
    """Every non-blank line of every manifest, parsed, one at a time (bounded memory)."""
    for manifest in manifests:
        with manifest.open("rt") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                source = f"{manifest.name}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    yield ManifestLine(source, None, f"not valid JSON ({error.msg})")
                    continue
                if not isinstance(record, dict) or not isinstance(record.get("audio_filepath"), str):
                    yield ManifestLine(source, None, "no audio_filepath")
                    continue
                yield ManifestLine(source, record)


def record_shard(record: dict[str, Any], source: str) -> int | None:
    """The shard a record's clip lives in: its shard_id, else the number of its manifest."""
    shard_id = record.get("shard_id")
    if isinstance(shard_id, int) or (isinstance(shard_id, str) and shard_id.isdigit()):
        return int(shard_id)
    match = _TRAILING_NUMBER.search(source.split(":")[0].split(".")[0])
    return int(match.group(1)) if match else None


def member_key(name: str) -> str:
    """Records and tar members are matched on the file name, whatever folders precede it."""
    return name.rsplit("/", 1)[-1]


def records_for_shard(manifests: tuple[Location, ...], shard_id: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """member key -> (manifest line, record) for every record whose clip is in `shard_id`.

    Duplicates keep the first record; the orchestrator reports the others.
    """
    records: dict[str, tuple[str, dict[str, Any]]] = {}
    for line in iter_manifest_lines(manifests):
        if line.record is not None and record_shard(line.record, line.source) == shard_id:
            records.setdefault(member_key(line.record["audio_filepath"]), (line.source, line.record))
    return records


def _strip_suffix(name: str) -> str:
    for suffix in sorted(SHARD_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _number_key(location: Location) -> tuple[int, str]:
    match = _TRAILING_NUMBER.search(location.name.split(".")[0])
    return (int(match.group(1)) if match else -1, location.url)
