"""What the trainer may delete or replace, proven before it does: its own run directories and tables.

`fit --overwrite` deletes a directory only when its run.json is a trainer run description and
everything in it is something a run writes; `export --overwrite` replaces only an export (its
`trainer-export.json` says so) that holds nothing else. `score` and `transcribe` replace a file only
when it is a table of the kind they write (its header says so), and never inside a store. A run
directory may be, hold or lie inside none of the run's inputs (stores, a local base model).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from trainer.errors import TrainerError

# Everything `trainer fit` writes at the top of a run directory (atomic writes add *.partial).
RUN_ENTRIES = frozenset(
    {"run.json", "processor", "base", "adapter", "model", "checkpoints", "metrics.jsonl", "metrics.png"}
)
# The kinds of file the trainer writes anywhere in a run or an export (weights, configs,
# tokenizer files, checkpoints, metrics; peft adds a README.md); anything else is the user's.
OWN_SUFFIXES = frozenset({".json", ".jsonl", ".safetensors", ".pt", ".png"})
OWN_NAMES = frozenset({"README.md"})
PARTIAL = re.compile(r"(.+)\.[0-9a-f]{8}\.partial")  # NAME.<8 hex>.partial: an atomic write of NAME cut short
EXPORT_MARKER = "trainer-export.json"  # written into every export: proof that --overwrite may replace it
HEADER_BYTES = 1 << 16  # a table's header row is far shorter


def local_inputs(paths: Iterable[str | Path | None]) -> list[Path]:
    """The inputs that are local paths (fsspec URLs and hub ids that name no local file drop out)."""
    return [Path(p) for p in paths if p and "://" not in str(p) and Path(p).exists()]


def check_apart(out: Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an output that is an input, lies inside one, or holds one."""
    target = out.resolve()
    for source_path in local_inputs(inputs):
        source = source_path.resolve()
        if target == source or target.is_relative_to(source):
            raise TrainerError(f"{out} lies inside the input {source_path}; choose an --out elsewhere")
        if source.is_relative_to(target):
            raise TrainerError(f"{out} holds the input {source_path}; choose an --out elsewhere")


def claim_output_dir(
    out: Path,
    inputs: Iterable[str | Path | None],
    overwrite: bool,
    deletable: Callable[[Path], None],
    alternative: str = "",
) -> None:
    """An output directory: apart from the inputs, not a link or a file, and an existing non-empty
    one only with `overwrite` and once `deletable(out)` has proven it ours (it raises otherwise)."""
    check_apart(out, inputs)
    if out.is_symlink():
        raise TrainerError(f"{out} is a symbolic link; give --out the directory itself")
    if out.exists() and not out.is_dir():
        raise TrainerError(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise TrainerError(f"{out} already exists; pass --overwrite to replace it{alternative}")
        deletable(out)


def check_run_deletable(path: Path) -> None:
    """Refuse to delete a run directory that holds anything a run does not write."""
    strangers = sorted(p.name for p in path.iterdir() if not is_run_entry(p.name))
    if strangers:
        raise TrainerError(
            f"{path} holds {strangers[0]!r}, which no trainer run writes; refusing to delete it with --overwrite"
        )
    check_files_are_ours(path)


def is_run_entry(name: str) -> bool:
    """A name at the top of a run directory: one the run writes, or one's atomic write cut short."""
    partial = PARTIAL.fullmatch(name)
    return name in RUN_ENTRIES or (partial is not None and partial.group(1) in RUN_ENTRIES)


def check_export_deletable(path: Path) -> None:
    """Refuse to replace a directory that `trainer export` did not write, or that holds more."""
    if not (path / EXPORT_MARKER).is_file():
        raise TrainerError(f"{path} is not a trainer export (no {EXPORT_MARKER}); refusing to replace it")
    strangers = sorted(p.name for p in path.iterdir() if p.is_dir())
    if strangers:
        raise TrainerError(f"{path} holds the folder {strangers[0]!r}, which no export writes; refusing to replace it")
    check_files_are_ours(path)


def check_files_are_ours(path: Path) -> None:
    """Refuse when anything below `path` is not a directory or a file of a kind the trainer writes
    (a link, a pipe, a socket, a user's document), an atomic write's leftover included."""
    for entry in sorted(path.rglob("*")):
        if entry.is_dir() and not entry.is_symlink():
            continue
        partial = PARTIAL.fullmatch(entry.name)
        name = partial.group(1) if partial else entry.name
        ours = Path(name).suffix in OWN_SUFFIXES or name in OWN_NAMES
        if entry.is_symlink() or not entry.is_file() or not ours:
            within = entry.relative_to(path)
            raise TrainerError(f"{path} holds {str(within)!r}, which the trainer never writes; refusing to delete it")


def header_row(path: Path) -> list[str] | None:
    """The first CSV row of `path`, or None when it is not UTF-8 text."""
    with path.open("rb") as f:
        head = f.read(HEADER_BYTES)
    try:
        first_line = head.decode("utf-8-sig").splitlines()[:1]
    except UnicodeDecodeError:
        return None
    return next(csv.reader(first_line), [])


def claim_table(out: Path, ours: Callable[[list[str]], bool], kind: str, example: str, store: Path) -> None:
    """Refuse a CSV output that would replace anything but a `kind` this trainer wrote (`ours(header)`),
    or that lies in `store` (beside the run's files it may: it replaces none of them)."""
    check_apart(out, [store])
    if out.is_dir():
        raise TrainerError(f"{out} is a directory; give --out a file name, like {out / example}")
    if out.exists() or out.is_symlink():
        if not out.is_file():
            raise TrainerError(f"{out} exists and is not a regular file; refusing to replace it")
        header = header_row(out)
        if header is None or not ours(header):
            raise TrainerError(f"{out} exists and is not a {kind} from trainer; remove it or choose another --out")
