"""The `featstore` command: options in, library calls out. Errors are one line and exit 2."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

# Ctrl-C is blocked while the libraries load: the threads they start (OpenBLAS's) inherit the
# block, so none can take a Ctrl-C while a cluster starts (featstore.interrupts), and a Ctrl-C
# meanwhile becomes one line, not a traceback.
_MASK = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
import click

from featstore import __version__
from featstore.commandline import OneLineErrors
from featstore.errors import FeatstoreError, describe_os_error
from featstore.ingest import dask_client, default_workers, ingest
from featstore.interrupts import held, ignore_in_worker_process
from featstore.layout import FORMAT_VERSION, IngestSettings
from featstore.lock import break_lock
from featstore.migrate import migrate_store
from featstore.reader import open_store
from featstore.repair import repair_store
from featstore.sample import LANGUAGES, write_sample_corpus
from featstore.sources import parse_shard_selection
from featstore.storage import finite, locate
from featstore.summary import format_summary, summarize
from featstore.verify import verify_store

ignore_in_worker_process()
try:
    signal.pthread_sigmask(signal.SIG_SETMASK, _MASK)
except KeyboardInterrupt:
    sys.stderr.write("interrupted; re-run to resume\n")
    raise SystemExit(130) from None

F = TypeVar("F", bound=Callable[..., Any])
DEFAULTS = IngestSettings()
# Below this a worker cannot hold one clip and its chunk buffers: Dask would restart it forever.
MIN_MEMORY_LIMIT = 256 * 2**20


def user_errors(command: F) -> F:
    """Turn FeatstoreError, and what the system refuses (OSError), into one `error: ...` line and exit 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FeatstoreError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except BrokenPipeError:  # `featstore info STORE | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            sys.exit(1)
        except OSError as error:
            click.echo(f"error: {describe_os_error(error)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; re-run to resume", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


class MemorySize(click.ParamType[str]):
    """A per-worker memory limit: "auto", or a size of at least MIN_MEMORY_LIMIT like 2GiB."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from dask.utils import format_bytes, parse_bytes

        text = str(value).strip()
        if text == "auto":
            return text
        try:
            size = parse_bytes(text)
        except (ValueError, TypeError):
            self.fail(f"{text!r} is not a size (like 2GiB, 512MiB or auto)", param, ctx)
        if size < MIN_MEMORY_LIMIT:
            self.fail(f"{text} is below the minimum of {format_bytes(MIN_MEMORY_LIMIT)} per worker", param, ctx)
        return text


class Address(click.ParamType[str]):
    """HOST:PORT or :PORT, where the dashboard listens (port 0 picks a free one)."""

    name = "host:port"
    HOST = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])?$")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        host, colon, port = text.rpartition(":")
        if not colon or not port.isdigit() or int(port) > 65535 or not self.HOST.match(host):
            self.fail(f"{text!r} is not HOST:PORT (like 127.0.0.1:8787, or :0 for any free port)", param, ctx)
        return text


def safe_name(value: str) -> str:
    """A single path component: no separators, no '..', not absolute, so OUT/<name>_tarred stays inside OUT."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value) or ".." in value:
        raise click.BadParameter(f"{value!r} must be a plain name (letters, digits, '.', '_', '-'), like train")
    return value


def letters(value: str) -> str:
    if not value.strip():
        raise click.BadParameter("needs at least one character that is not a space")
    return value


def cluster_options(command: F) -> F:
    """--workers, --memory-limit, --scheduler and --dashboard-address: the Dask cluster a command runs on."""
    for option in reversed(
        (
            click.option(
                "--workers",
                type=click.IntRange(min=1),
                default=default_workers(),
                help="Dask worker processes (one thread each).",
            ),
            click.option(
                "--memory-limit", type=MemorySize(), default="2GiB", help="Memory limit per Dask worker (>= 256MiB)."
            ),
            click.option(
                "--scheduler",
                help="Address of an existing Dask scheduler (tcp://HOST:8786) instead of a local cluster.",
            ),
            click.option(
                "--dashboard-address",
                type=Address(),
                default="127.0.0.1:8787",
                help="Where the local cluster serves its dashboard (:0 picks a free port).",
            ),
        )
    ):
        command = option(command)
    return command


@click.group(cls=OneLineErrors, context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
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
@cluster_options
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
    if not 0 <= min_duration < max_duration < float("inf"):
        raise FeatstoreError("--min-duration must be at least 0 and below --max-duration, both finite")
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
        click.echo(json.dumps(finite(summary), ensure_ascii=False, indent=2, allow_nan=False))
    else:
        for line in format_summary(summary):
            click.echo(line)


@main.command("inspect")
@click.argument("store")
@click.option("--report", type=click.Path(path_type=Path), help="Write a self-contained HTML report here.")
@click.option("--plots", type=click.Path(path_type=Path), help="Write PNG plots into this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as one JSON object.")
@cluster_options
@click.option("--keep-dashboard", is_flag=True, help="Keep the cluster and its dashboard up until Ctrl-C.")
@click.option(
    "--quiet-below",
    type=click.FloatRange(max=0),
    default=-60.0,
    show_default=True,
    help="List utterances recorded below this level (dBFS) as near-silent.",
)
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
    quiet_below: float,
) -> None:
    """Measure every utterance with dask.array: durations, levels, peaks, silences, speaking rate."""
    from featstore.inspection import format_inspection, inspect_store, inspection_summary  # dask.array: slow import

    if report and report.is_dir():
        raise FeatstoreError(
            f"--report {report} is a directory; give the HTML file to write, like {report}/report.html"
        )
    if plots and plots.exists() and not plots.is_dir():
        raise FeatstoreError(f"--plots {plots} is a file; give a folder for the PNG files")
    with held():  # Ctrl-C while the cluster starts arrives once it is up: see featstore.interrupts
        opened = open_store(store)
        with dask_client(workers, memory_limit, scheduler, dashboard_address) as client:
            click.echo(f"Dask dashboard: {client.dashboard_link}", err=as_json)
            inspection = inspect_store(opened, quiet_db=quiet_below)
            summary = inspection_summary(inspection)
            if report or plots:
                from featstore.report import write_html, write_plots  # matplotlib: ~1 s to import, only when asked for

                if report:
                    click.echo(f"report: {write_html(inspection, report)}", err=as_json)
                if plots:
                    click.echo(f"plots: {', '.join(str(p) for p in write_plots(inspection, plots))}", err=as_json)
            if as_json:
                click.echo(json.dumps(finite(summary), ensure_ascii=False, indent=2, allow_nan=False))
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
@click.option(
    "--split", default="train", callback=lambda _c, _p, v: safe_name(v), help="Split name: writes OUT/<split>_tarred/."
)
@click.option("--seed", type=int, default=0)
@click.option("--defects/--no-defects", default=True, help="Plant one clip of each defect in shard 0.")
@click.option(
    "--language",
    type=click.Choice(sorted(LANGUAGES)),
    default="a",
    help="How characters sound: a (Latin letters) or b (Greek letters, its own sound for each).",
)
@click.option(
    "--alphabet",
    callback=lambda _c, _p, v: None if v is None else letters(v),
    help="Characters the sample text uses, in pitch order  [default: the language's letters]",
)
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


@main.command("repair")
@click.argument("store")
@click.option(
    "--redo", multiple=True, help="Mark this shard unfinished (a damaged chunk): the next ingest rewrites it."
)
@user_errors
def repair_command(store: str, redo: tuple[str, ...]) -> None:
    """Rebuild a store's index from its complete shards (a lost or garbled index/zarr.json)."""
    for line in repair_store(store, redo, note=lambda line: click.echo(line, err=True)).lines():
        click.echo(line)


@main.command("migrate")
@click.argument("store")
@user_errors
def migrate_command(store: str) -> None:
    """Convert a format-1 or format-2 store to the current format in place (its audio is kept as it is)."""
    converted = migrate_store(store, note=lambda line: click.echo(line, err=True))
    click.echo(f"converted {converted} shard(s); the store is format {FORMAT_VERSION}")


@main.command("unlock")
@click.argument("store")
@click.option("--force", is_flag=True, help="Break the lock even if its holder still runs on this host.")
@user_errors
def unlock_command(store: str, force: bool) -> None:
    """Break a store's writer lock that a crashed or killed ingest left behind."""
    holder = break_lock(locate(store), force)
    click.echo(f"removed the lock of {holder.describe()}" if holder else f"{store} is not locked")


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
