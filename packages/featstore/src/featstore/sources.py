"""Finding a corpus's shards and manifests, choosing shards, and reading manifest records.

A split directory in the real layout (`manifest_*.json` beside `audio_shards/audio_*.tar.xz`),
or any directory holding such files at any depth, local or remote (see `storage`). A shard's id
is the number that ends its file name (`audio_7.tar.xz` -> 7); a record's `shard_id` names the
shard holding its clip.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import IO, Any

from featstore.errors import FeatstoreError
from featstore.storage import Location

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz")
_TRAILING_NUMBER = re.compile(r"(\d+)$")
UTF8_BOM = b"\xef\xbb\xbf"
LINE_BLOCK_BYTES = 1 << 20


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


@dataclass(frozen=True)
class ShardSelection:
    """`--shards` as written: numbers and inclusive ranges, never expanded (a range may be huge)."""

    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, shard_ids: AbstractSet[int]) -> ShardSelection:
        return cls(tuple((shard_id, shard_id) for shard_id in sorted(shard_ids)))

    def __contains__(self, shard_id: object) -> bool:
        return isinstance(shard_id, int) and any(first <= shard_id <= last for first, last in self.ranges)


def parse_shard_selection(text: str) -> ShardSelection:
    """'0,3,5-9' -> numbers 0 and 3 and the range 5-9."""
    ranges: list[tuple[int, int]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise FeatstoreError(f"--shards: cannot read '{part}' (expected numbers and ranges like 0,3,5-9)")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise FeatstoreError(f"--shards: range '{part}' runs backwards")
        ranges.append((first, last))
    return ShardSelection(tuple(ranges))


def select_shards(
    corpus: Corpus, selection: ShardSelection | AbstractSet[int] | None, max_shards: int | None
) -> tuple[ShardSource, ...]:
    """The shards chosen by number or range (checked against the shards that exist), then by count."""
    shards = corpus.shards
    if selection is not None:
        chosen = selection if isinstance(selection, ShardSelection) else ShardSelection.of(selection)
        found = [s.shard_id for s in shards]
        missing = [str(first) for first, last in chosen.ranges if first == last and first not in found]
        if missing:
            raise FeatstoreError(f"--shards: no shard numbered {', '.join(missing)} in the input")
        empty = [f"{first}-{last}" for first, last in chosen.ranges if not any(first <= i <= last for i in found)]
        if empty:
            raise FeatstoreError(f"--shards: no shard in the range {empty[0]} in the input")
        shards = tuple(s for s in shards if s.shard_id in chosen)
    if max_shards is not None:
        shards = shards[:max_shards]
    if not shards:
        raise FeatstoreError("no shards selected")
    return shards


def iter_manifest_lines(manifests: tuple[Location, ...]) -> Iterator[ManifestLine]:
    """Every non-blank line of every manifest, parsed, one at a time (bounded memory).

    Read as bytes and decoded line by line, so that one line that is not UTF-8 is one bad line,
    not a failed file; a UTF-8 byte order mark before the first line is ignored.
    """
    for manifest in manifests:
        with manifest.open("rb") as stream:
            for number, raw in enumerate(_byte_lines(stream), start=1):
                line = _parse_line(raw.removeprefix(UTF8_BOM) if number == 1 else raw, f"{manifest.name}:{number}")
                if line is not None:
                    yield line


def _byte_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """The lines of a binary stream, read in blocks: fsspec's own readline seeks, which a
    streamed HTTP file cannot do."""
    pending: list[bytes] = []
    while block := stream.read(LINE_BLOCK_BYTES):
        first, *rest = block.split(b"\n")
        if rest:
            yield b"".join([*pending, first])
            yield from rest[:-1]
            pending = [rest[-1]]
        else:
            pending.append(first)
    if any(pending):
        yield b"".join(pending)


def _parse_line(raw: bytes, source: str) -> ManifestLine | None:
    """One manifest line as a record, or why it is not one; None for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return ManifestLine(source, None, f"not valid UTF-8 (byte {error.start + 1}: {raw[error.start]:#04x})")
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return ManifestLine(source, None, f"not valid JSON ({error.msg})")
    if not isinstance(record, dict) or not isinstance(record.get("audio_filepath"), str):
        return ManifestLine(source, None, "no audio_filepath")
    if not _is_unicode(record["audio_filepath"]):
        return ManifestLine(source, None, "audio_filepath is not valid Unicode (a lone surrogate)")
    return ManifestLine(source, record)


def record_problem(record: dict[str, Any]) -> str | None:
    """Why a record cannot be stored as it is, or None.

    Its duration must be a finite number >= 0 when present; no field may hold a non-finite
    number (JSON has none, Python's parser accepts NaN and Infinity) or a lone surrogate
    (valid escaped JSON, but not encodable text).
    """
    duration = record.get("duration")
    if isinstance(duration, (int, float)) and not (math.isfinite(duration) and duration >= 0):
        return f"duration is {duration}"
    for key, value in record.items():
        problem = _value_problem(key) or _value_problem(value)
        if problem:
            return f"field '{printable(key)}' {problem}"
    return None


def _value_problem(value: Any) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"is {value}"
    if isinstance(value, str) and not _is_unicode(value):
        return "has a lone surrogate (not valid Unicode)"
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list):
        return next(filter(None, map(_value_problem, value)), None)
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """Text that any JSON encoder and terminal takes: lone surrogates written as escapes (\\udcff)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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


ShardRecords = dict[str, tuple[str, dict[str, Any]]]


def records_for_shard(
    manifests: tuple[Location, ...], shard_id: int
) -> tuple[ShardRecords, list[tuple[str, dict[str, Any]]]]:
    """member key -> (manifest line, record) for every record whose clip is in `shard_id`, and the
    (line, record) of each later record of a clip already listed (the first one is kept).

    Duplicates are found here, per shard, and not by the orchestrator: a set of every clip of the
    corpus would make the client's memory grow with the corpus.
    """
    records: ShardRecords = {}
    duplicates = []
    for line in iter_manifest_lines(manifests):
        if line.record is not None and record_shard(line.record, line.source) == shard_id:
            key = member_key(line.record["audio_filepath"])
            if key in records:
                duplicates.append((line.source, line.record))
            else:
                records[key] = (line.source, line.record)
    return records, duplicates


def _strip_suffix(name: str) -> str:
    for suffix in sorted(SHARD_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _number_key(location: Location) -> tuple[int, str]:
    match = _TRAILING_NUMBER.search(location.name.split(".")[0])
    return (int(match.group(1)) if match else -1, location.url)
