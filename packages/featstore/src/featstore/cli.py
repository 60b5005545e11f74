"""The `featstore` command: options in, library calls out. Errors are one line and exit 2."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from featstore import __version__
from featstore.errors import FeatstoreError
from featstore.ingest import dask_client, default_workers, ingest
from featstore.layout import IngestSettings
from featstore.reader import open_store
from featstore.sample import LANGUAGES, write_sample_corpus
from featstore.sources import parse_shard_selection
from featstore.summary import format_summary, summarize
from featstore.verify import verify_store

F = TypeVar("F", bound=Callable[..., Any])
DEFAULTS = IngestSettings()


def user_errors(command: F) -> F:
    """Turn FeatstoreError into `error: ...` on stderr and exit status 2, with no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FeatstoreError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: what was written is kept; re-running an ingest resumes it", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="featstore")
def main() -> None:
    """Stream tarred speech corpora into a Zarr store of normalized 16 kHz audio."""


@main.command("ingest")
@click.argument("input_dir")
@click.option("--out", required=True, help="Store to write: a directory ending in .zarr, or an fsspec URL.")
@click.option("--max-shards", type=click.IntRange(min=1), help="Ingest only the first N shards.")
@click.option("--shards", "shard_text", help="Shard numbers to ingest, like 0,3,5-9.")
@click.option(
    "--min-duration", type=float, default=DEFAULTS.min_duration, help="Reject clips shorter than this many seconds."
)
@click.option(
    "--max-duration", type=float, default=DEFAULTS.max_duration, help="Reject clips longer than this many seconds."
)
@click.option(
    "--keep-empty-text/--reject-empty-text",
    default=DEFAULTS.keep_empty_text,
    help="Keep clips with empty or null text (test splits).",
)
@click.option(
    "--alphabet", default=DEFAULTS.alphabet, help="Expected characters; others are kept and listed by `featstore info`."
)
@click.option(
    "--max-member-bytes",
    type=click.IntRange(min=1),
    default=DEFAULTS.max_member_bytes,
    help="Reject tar members larger than this before reading them.",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=default_workers(), help="Dask worker processes (one thread each)."
)
@click.option("--memory-limit", default="2GiB", help="Memory limit per Dask worker.")
@click.option("--scheduler", help="Address of an existing Dask scheduler (tcp://HOST:8786) instead of a local cluster.")
@click.option(
    "--dashboard-address",
    default="127.0.0.1:8787",
    help="Where the local cluster serves its dashboard (:0 picks a free port).",
)
@click.option("--append", is_flag=True, help="Add new shards to an existing store.")
@click.option("--overwrite", is_flag=True, help="Delete an existing store first.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@user_errors
def ingest_command(
    input_dir: str,
    out: str,
    shard_text: str | None,
    max_shards: int | None,
    min_duration: float,
    max_duration: float,
    keep_empty_text: bool,
    alphabet: str,
    max_member_bytes: int,
    workers: int,
    memory_limit: str,
    scheduler: str | None,
    dashboard_address: str,
    append: bool,
    overwrite: bool,
    progress: bool,
) -> None:
    """Stream the tar shards under INPUT_DIR (a folder or an fsspec URL) into the store at --out.

    Re-running the same command resumes: completed shards are skipped, unfinished ones redone.
    """
    if min_duration >= max_duration:
        raise FeatstoreError("--min-duration must be below --max-duration")
    settings = IngestSettings(
        min_duration=min_duration,
        max_duration=max_duration,
        keep_empty_text=keep_empty_text,
        alphabet=alphabet,
        max_member_bytes=max_member_bytes,
    )
    summary = ingest(
        input_dir,
        out,
        settings=settings,
        shard_selection=parse_shard_selection(shard_text) if shard_text else None,
        max_shards=max_shards,
        workers=workers,
        memory_limit=memory_limit,
        scheduler=scheduler,
        dashboard_address=dashboard_address,
        append=append,
        overwrite=overwrite,
        echo=click.echo,
        show_progress=progress,
    )
    for line in summary.lines():
        click.echo(line)
    if summary.shards_failed:
        raise FeatstoreError(
            f"{len(summary.shards_failed)} shard(s) failed; the others are kept. Fix or remove them and re-run"
        )


@main.command("info")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def info_command(store: str, as_json: bool) -> None:
    """Summarize a store: utterances, hours, shards, rejects, characters."""
    summary = summarize(open_store(store))
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        for line in format_summary(summary):
            click.echo(line)


@main.command("inspect")
@click.argument("store")
@click.option("--report", type=click.Path(path_type=Path), help="Write a self-contained HTML report here.")
@click.option("--plots", type=click.Path(path_type=Path), help="Write PNG plots into this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as one JSON object.")
@click.option("--workers", type=click.IntRange(min=1), default=default_workers(), help="Dask worker processes.")
@click.option("--memory-limit", default="2GiB", help="Memory limit per Dask worker.")
@click.option("--scheduler", help="Address of an existing Dask scheduler instead of a local cluster.")
@click.option(
    "--dashboard-address",
    default="127.0.0.1:8787",
    help="Where the local cluster serves its dashboard (:0 picks a free port).",
)
@click.option("--keep-dashboard", is_flag=True, help="Keep the cluster and its dashboard up until Ctrl-C.")
@user_errors
def inspect_command(
    store: str,
    report: Path | None,
    plots: Path | None,
    as_json: bool,
    workers: int,
    memory_limit: str,
    scheduler: str | None,
    dashboard_address: str,
    keep_dashboard: bool,
) -> None:
    """Measure every utterance with dask.array: durations, levels, peaks, silences, speaking rate."""
    from featstore.inspection import format_inspection, inspect_store, inspection_summary  # dask.array: slow import

    opened = open_store(store)
    with dask_client(workers, memory_limit, scheduler, dashboard_address) as client:
        click.echo(f"Dask dashboard: {client.dashboard_link}", err=as_json)
        inspection = inspect_store(opened)
        summary = inspection_summary(inspection)
        if report or plots:
            from featstore.report import write_html, write_plots  # matplotlib: ~1 s to import, only when asked for

            if report:
                click.echo(f"report: {write_html(inspection, report)}", err=as_json)
            if plots:
                click.echo(f"plots: {', '.join(str(p) for p in write_plots(inspection, plots))}", err=as_json)
        if as_json:
            click.echo(json.dumps(summary, ensure_ascii=False, indent=2))
        else:
            for line in format_inspection(summary):
                click.echo(line)
        if keep_dashboard:
            wait_for_interrupt(lambda: click.echo("keeping the dashboard up; press Ctrl-C to stop", err=True))


@main.command("verify")
@click.argument("store")
@user_errors
def verify_command(store: str) -> None:
    """Recompute every shard's checksum and check the index; exit non-zero at the first problem."""
    checked = verify_store(store, echo=click.echo)
    click.echo(f"verified {checked} utterances")


@main.command("sample")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--shards", type=click.IntRange(min=1), default=2, help="Number of audio shards.")
@click.option("--clips", type=click.IntRange(min=1), default=12, help="Clips per shard.")
@click.option("--split", default="train", help="Split name: writes OUT/<split>_tarred/.")
@click.option("--seed", type=int, default=0)
@click.option("--defects/--no-defects", default=True, help="Plant one clip of each defect in shard 0.")
@click.option(
    "--language",
    type=click.Choice(sorted(LANGUAGES)),
    default="a",
    help="How characters sound: a (Latin letters) or b (Greek letters, its own sound for each).",
)
@click.option("--alphabet", help="Characters the sample text uses, in pitch order  [default: the language's letters]")
@click.option(
    "--words", type=(click.IntRange(min=1), click.IntRange(min=1)), default=(2, 5), help="Words per clip: MIN MAX."
)
@click.option(
    "--mislabels",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Share of clips given a wrong transcript (another clip's, or cut in half); listed in planted.json.",
)
@user_errors
def sample_command(
    out: Path,
    shards: int,
    clips: int,
    split: str,
    seed: int,
    defects: bool,
    language: str,
    alphabet: str | None,
    words: tuple[int, int],
    mislabels: float,
) -> None:
    """Write a small corpus in the real tarred layout (webm/opus tone-language audio)."""
    corpus = write_sample_corpus(
        out,
        shards=shards,
        clips_per_shard=clips,
        seed=seed,
        defects=defects,
        alphabet=alphabet,
        split=split,
        language=language,
        words=(min(words), max(words)),
        mislabels=mislabels,
    )
    click.echo(f"wrote {corpus.clips} clips in {corpus.shards} shards to {corpus.split_dir}")


def wait_for_interrupt(announce: Callable[[], None]) -> None:
    """Announce, then block until Ctrl-C or SIGTERM; return so the cluster shuts down cleanly."""
    import signal
    import threading

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())  # installed before the announcement: no race
    announce()
    while not stop.wait(0.5):
        pass


if __name__ == "__main__":
    main()
