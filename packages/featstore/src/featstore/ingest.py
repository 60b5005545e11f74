"""Ingest orchestration: one bounded-memory Dask task per shard, resume, progress, summary.

Each task streams one shard and writes one shard group, so tasks never contend. The client
adds each shard to the root's list of complete shards when it completes (O(shards) work).
Re-running the same command skips completed shards and redoes unfinished ones from scratch, so a
run killed at any moment ends, after a re-run, with the same content as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import zarr
from tqdm import tqdm

from featstore import __version__
from featstore.audio import SAMPLE_RATE, DecodeError, decode_clip, measure_levels, normalize, quantize
from featstore.errors import FeatstoreError
from featstore.guard import refuse_overlap, writable_store
from featstore.index import CompleteShards, StoreIndex, consolidate_index, record_completed
from featstore.interrupts import cluster_starting, held
from featstore.layout import IncompleteSettings, IngestSettings, open_root, record_sources, restore_settings
from featstore.lock import WriterLock
from featstore.shardmeta import Reject, ShardSummary, is_complete, read_shard_summary
from featstore.shards import UnreadableShard, iter_members
from featstore.shardwriter import ShardWriter
from featstore.sources import (
    Corpus,
    ShardSelection,
    ShardSource,
    discover,
    iter_manifest_lines,
    member_key,
    record_problem,
    record_shard,
    records_for_shard,
    select_shards,
)
from featstore.storage import Location, locate

PROGRESS_TOPIC = "featstore-progress"
# A clip decoded this much shorter than its manifest duration was cut off (webm often decodes
# a truncated file without any error).
TRUNCATION_TOLERANCE = 0.1

ProgressFn = Callable[[int, float], None]
# Dask's defaults sample each worker's stack every 10 ms (the dashboard's profile page) and poll
# memory and system counters every 100-500 ms: measured here, that took ~15% of the local workers'
# CPU during an ingest. At these intervals every dashboard page still works, at ~4% of it.
LOCAL_MONITORING = {
    "distributed.worker.profile.interval": "100ms",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.admin.system-monitor.interval": "1s",
    "distributed.admin.tick.interval": "200ms",
}


@dataclass(frozen=True)
class ManifestScan:
    """What one pass over the manifests tells before any audio is read."""

    clips_per_shard: Counter[int]
    seconds_per_shard: dict[int, float]
    rejects: list[Reject]
    manifests_per_shard: dict[int, set[int]]  # positions in the corpus's manifests holding the shard's records

    def manifests_of(self, shard_id: int, manifests: tuple[Location, ...]) -> tuple[Location, ...]:
        """The manifests that hold records of `shard_id`, in corpus order: its task parses those alone.

        With a manifest per shard (NeMo's layout) a task parses one file, not every line of the
        corpus: on 27 manifests of 6,500 records, 0.05 CPU-s a task instead of 1.1 (~1.5% of
        decoding its shard), and the whole corpus's parsing no longer grows with shards x lines.
        """
        return tuple(manifests[i] for i in sorted(self.manifests_per_shard.get(shard_id, ())))


@dataclass(frozen=True)
class ShardFailed:
    """A shard task's result when the shard could not be written; its reason is reported once."""

    reason: str


ShardResult = ShardSummary | ShardFailed


@dataclass
class IngestSummary:
    store: str
    shards_done: list[str] = field(default_factory=list)
    shards_skipped: list[str] = field(default_factory=list)
    shards_failed: dict[str, str] = field(default_factory=dict)
    clips: int = 0
    seconds: float = 0.0
    rejects: Counter[str] = field(default_factory=Counter)
    bytes_written: int = 0
    raw_bytes: int = 0
    wall_seconds: float = 0.0

    def lines(self) -> list[str]:
        ratio = "no audio"
        if self.raw_bytes and self.bytes_written:
            ratio = f"compression {self.raw_bytes / self.bytes_written:.2f}x against float32"
        rejects = ", ".join(f"{reason} {count}" for reason, count in sorted(self.rejects.items())) or "none"
        lines = [
            f"store        {self.store}",
            f"shards       {len(self.shards_done)} ingested, {len(self.shards_skipped)} already complete, "
            f"{len(self.shards_failed)} failed",
            f"clips        {self.clips} ({self.seconds / 3600:.2f} h of audio)",
            f"rejects      {rejects}",
            f"written      {self.bytes_written / 1e6:.1f} MB ({ratio})",
            f"wall time    {self.wall_seconds:.1f} s",
        ]
        lines += [f"FAILED       {shard}: {reason}" for shard, reason in self.shards_failed.items()]
        return lines


def ingest_shard(
    store: Location,
    shard: ShardSource,
    manifests: tuple[Location, ...],
    settings: IngestSettings,
    report: ProgressFn | None = None,
) -> ShardResult:
    """Stream one shard into its own group of the store; return the shard's summary.

    Memory: the shard's manifest records, one clip, and the writer's chunk buffers.
    """
    root, _ = open_root(store, mode="r+")
    records, duplicates = records_for_shard(manifests, shard.shard_id)
    writer = ShardWriter(store, root, shard.name, shard.describe())
    for source, record in duplicates:
        writer.reject(record["audio_filepath"], "duplicate_record", f"{source}: listed twice")
    report = report or _report_to_dask
    pending_clips, pending_seconds, last_report = 0, 0.0, time.monotonic()
    try:
        for member in iter_members(shard.location, settings.max_member_bytes):
            entry = records.pop(member_key(member.name), None)
            seconds = _store_member(writer, member.name, member.data, entry[1] if entry else None, settings)
            pending_clips, pending_seconds = pending_clips + 1, pending_seconds + seconds
            if time.monotonic() - last_report > 0.5:
                report(pending_clips, pending_seconds)
                pending_clips, pending_seconds, last_report = 0, 0.0, time.monotonic()
    except UnreadableShard as error:  # bad input, not a bug: reported without a worker traceback
        return ShardFailed(str(error))
    for source, record in records.values():
        writer.reject(record["audio_filepath"], "missing_audio", f"{source}: clip not in {shard.location.name}")
    report(pending_clips + len(records) + len(duplicates), pending_seconds)  # the scan counted them all
    return writer.finish()


def _store_member(
    writer: ShardWriter, name: str, data: bytes | None, record: dict[str, Any] | None, settings: IngestSettings
) -> float:
    """Decode and add one clip, or reject it with its reason; returns the seconds stored."""
    if record is None:
        writer.reject(name, "no_record", "tar member listed in no manifest")
        return 0.0
    if data is None:
        writer.reject(name, "member_too_large", f"larger than --max-member-bytes {settings.max_member_bytes}")
        return 0.0
    problem = record_problem(record)
    if problem:
        writer.reject(name, "bad_record", problem)
        return 0.0
    text = record.get("text")
    if not settings.keep_empty_text and (not isinstance(text, str) or not text.strip()):
        writer.reject(name, "empty_text", "text is null" if text is None else "text is empty")
        return 0.0
    try:
        audio = decode_clip(data, max_seconds=settings.max_duration)
    except DecodeError as error:
        writer.reject(name, error.reason, str(error))
        return 0.0
    seconds = audio.size / SAMPLE_RATE
    expected = record.get("duration")
    if isinstance(expected, (int, float)) and seconds < expected * (1 - TRUNCATION_TOLERANCE) - 0.05:
        writer.reject(name, "truncated", f"decoded {seconds:.2f} s, manifest says {expected:.2f} s")
        return 0.0
    if seconds < settings.min_duration:
        writer.reject(name, "too_short", f"{seconds:.2f} s < --min-duration {settings.min_duration}")
        return 0.0
    if seconds > settings.max_duration:
        writer.reject(name, "too_long", f"{seconds:.2f} s > --max-duration {settings.max_duration}")
        return 0.0
    fields = {key: value for key, value in record.items() if key != "text"}
    writer.add(quantize(normalize(audio)), measure_levels(audio), text if isinstance(text, str) else "", fields)
    return seconds


def _report_to_dask(clips: int, seconds: float) -> None:
    """Send progress to the client through the scheduler's event log (a no-op outside Dask)."""
    from distributed import get_worker

    with contextlib.suppress(ValueError):
        get_worker().log_event(PROGRESS_TOPIC, {"clips": clips, "seconds": seconds})


def scan_manifests(corpus: Corpus, selected: tuple[ShardSource, ...]) -> ManifestScan:
    """Count clips per shard and find manifest-level rejects, one line at a time, in memory that
    does not grow with the clips (duplicates are each shard task's to find)."""
    known = {s.shard_id for s in corpus.shards}
    chosen = {s.shard_id for s in selected}
    clips: Counter[int] = Counter()
    seconds: dict[int, float] = defaultdict(float)
    rejects: list[Reject] = []
    holders: dict[int, set[int]] = defaultdict(set)
    for position, manifest in enumerate(corpus.manifests):
        for line in iter_manifest_lines((manifest,)):
            if line.record is None:
                rejects.append(Reject("", "bad_manifest_line", f"{line.source}: {line.error}"))
                continue
            shard_id = record_shard(line.record, line.source)
            path = line.record["audio_filepath"]
            if shard_id not in known:
                rejects.append(Reject(path, "missing_audio", f"{line.source}: shard {shard_id} not in the input"))
                continue
            if shard_id not in chosen:
                continue
            clips[shard_id] += 1
            holders[shard_id].add(position)
            duration = line.record.get("duration")
            seconds[shard_id] += (
                float(duration) if isinstance(duration, (int, float)) and math.isfinite(duration) else 0.0
            )
    return ManifestScan(clips, seconds, rejects, dict(holders))


def prepare_store(
    out: Location,
    selected: tuple[ShardSource, ...],
    settings: IngestSettings,
    append: bool,
    echo: Callable[[str], None] = print,
) -> None:
    """Check that the (locked) store may take these shards, and record their sources."""
    try:
        root, info = open_root(out, mode="r+")
    except IncompleteSettings:
        echo("note: the store's settings were missing or incomplete; recorded this run's options")
        restore_settings(zarr.open_group(out.url, mode="r+"), settings, __version__)
        root, info = open_root(out, mode="r+")
    if info.settings != settings:
        raise FeatstoreError(
            f"{out.url} was ingested with other settings ({_settings_diff(info.settings, settings)}); "
            "use the same options, or --overwrite to start again"
        )
    sources = {s.name: s.describe() for s in selected}
    # Only a complete shard pins its source: a failed one may be re-run from a repaired file.
    conflicts = [
        name
        for name, source in sources.items()
        if name in info.sources
        and info.sources[name]["size"] != source["size"]
        and is_complete(read_shard_summary(root, name), info.sources[name])
    ]
    if conflicts:
        raise FeatstoreError(
            f"{out.url}: shard {conflicts[0]} in the store came from a different file; use --overwrite to start again"
        )
    new = [name for name in sources if name not in info.sources]
    if info.sources and new and not append:
        raise FeatstoreError(
            f"{out.url} already holds a store made from other sources ({len(info.sources)} shards); "
            "use --append to add these shards or --overwrite to replace it"
        )
    record_sources(root, sources)


def _settings_diff(old: IngestSettings, new: IngestSettings) -> str:
    changed = [key for key, value in new.to_json().items() if old.to_json().get(key) != value]
    return ", ".join(f"{key}: {old.to_json()[key]!r} -> {new.to_json()[key]!r}" for key in changed)


@contextlib.contextmanager
def dask_client(workers: int, memory_limit: str, scheduler: str | None, dashboard_address: str) -> Iterator[Any]:
    """A client on an existing scheduler, or on a LocalCluster of single-threaded workers."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    # Dask starts workers with MALLOC_TRIM_THRESHOLD_ set, which also turns off glibc's adaptive
    # mmap threshold: every clip-sized array is then mmapped and unmapped, and the page faults
    # cost the workers about a third of their CPU time. glibc's defaults keep memory as flat.
    environ = {
        key: value
        for key, value in dask.config.get("distributed.nanny.pre-spawn-environ").items()
        if key != "MALLOC_TRIM_THRESHOLD_"
    }
    with contextlib.ExitStack() as stack:
        with cluster_starting():
            stack.enter_context(dask.config.set({"distributed.nanny.pre-spawn-environ": environ, **LOCAL_MONITORING}))
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    memory_limit=memory_limit,
                    dashboard_address=dashboard_address,
                    processes=True,
                )
            )
            client = stack.enter_context(Client(cluster))
        yield client


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def ingest(
    input_dir: str | Path,
    out: str | Path,
    *,
    settings: IngestSettings | None = None,
    shard_selection: ShardSelection | AbstractSet[int] | None = None,
    max_shards: int | None = None,
    workers: int | None = None,
    memory_limit: str = "2GiB",
    scheduler: str | None = None,
    dashboard_address: str = "127.0.0.1:8787",
    append: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
    show_progress: bool = True,
) -> IngestSummary:
    """Ingest the shards of `input_dir` into the store at `out` (see the module docstring)."""
    started = time.perf_counter()
    settings = settings or IngestSettings()
    store, source = locate(out), locate(input_dir)
    corpus = discover(source)
    refuse_overlap(source, store)
    selected = select_shards(corpus, shard_selection, max_shards)
    scan = scan_manifests(corpus, selected)
    with held(), writable_store(store, settings, overwrite, echo) as lock:
        prepare_store(store, selected, settings, append, echo)
        root, _ = open_root(store, mode="r+")
        todo = [s for s in selected if not is_complete(read_shard_summary(root, s.name), s.describe())]
        summary = IngestSummary(store=store.url, shards_skipped=[s.name for s in selected if s not in todo])
        completed = CompleteShards(scan.rejects)  # every complete shard: the index is rebuilt from it
        consolidate_index(store, root, completed)
        if todo:
            _run_tasks(
                todo,
                corpus,
                settings,
                scan,
                store,
                summary,
                workers or default_workers(),
                memory_limit,
                scheduler,
                dashboard_address,
                echo,
                show_progress,
                completed,
                lock,
            )
        index = consolidate_index(store, root, completed)
    _fill_totals(summary, index, completed.summaries, store)
    summary.wall_seconds = time.perf_counter() - started
    return summary


def _run_tasks(
    todo: list[ShardSource],
    corpus: Corpus,
    settings: IngestSettings,
    scan: ManifestScan,
    out: Location,
    summary: IngestSummary,
    workers: int,
    memory_limit: str,
    scheduler: str | None,
    dashboard_address: str,
    echo: Callable[[str], None],
    show_progress: bool,
    completed: CompleteShards,
    lock: WriterLock,
) -> None:
    from distributed import as_completed

    total_clips = sum(scan.clips_per_shard[s.shard_id] for s in todo)
    total_hours = sum(scan.seconds_per_shard[s.shard_id] for s in todo) / 3600
    with dask_client(workers, memory_limit, scheduler, dashboard_address) as client:
        echo(f"Dask dashboard: {client.dashboard_link}")
        bar = tqdm(total=total_clips, unit="clip", disable=not show_progress, desc=f"ingest ({total_hours:.2f} h)")
        hours = [0.0]

        def on_progress(event: tuple[float, dict[str, Any]]) -> None:
            hours[0] += event[1]["seconds"] / 3600
            lock.refresh()
            bar.set_postfix_str(f"{hours[0]:.2f}/{total_hours:.2f} h", refresh=False)
            bar.update(event[1]["clips"])

        client.subscribe_topic(PROGRESS_TOPIC, on_progress)
        futures = {
            client.submit(
                _shard_task,
                out,
                shard,
                scan.manifests_of(shard.shard_id, corpus.manifests),
                settings,
                key=f"ingest-{shard.name}-{time.time_ns()}",
            ): shard
            for shard in todo
        }
        for future in as_completed(futures):
            shard = futures[future]
            try:
                result = future.result()
            except Exception as error:  # a failed task must not take the other shards down with it
                result = ShardFailed(f"{type(error).__name__}: {error}")
            if isinstance(result, ShardFailed):
                summary.shards_failed[shard.name] = result.reason
                continue
            summary.shards_done.append(shard.name)
            record_completed(out, completed, shard.name, result)
            lock.refresh()
        client.unsubscribe_topic(PROGRESS_TOPIC)
        bar.close()


def _shard_task(
    store: Location, shard: ShardSource, manifests: tuple[Location, ...], settings: IngestSettings
) -> ShardResult:
    """One shard; what the system refuses (a full disk, a read-only store) fails that shard with its
    reason, reported once by the client, instead of a worker's "Compute Failed" traceback."""
    try:
        return ingest_shard(store, shard, manifests, settings)
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        return ShardFailed(f"{error.strerror or error}{where}")


def _fill_totals(summary: IngestSummary, index: StoreIndex, shards: dict[str, ShardSummary], out: Location) -> None:
    samples = sum(entry.samples for entry in index.shards)
    summary.clips = sum(entry.clips for entry in index.shards)
    summary.seconds = samples / SAMPLE_RATE
    shard_rejects = [reject for entry in index.shards for reject in shards[entry.name].rejects]
    summary.rejects = Counter(reject.reason for reject in (*index.rejects, *shard_rejects))
    summary.raw_bytes = samples * 4
    summary.bytes_written = out.total_bytes()
