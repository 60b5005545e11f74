"""Misuse and faults, tried as a hostile user would: destructive options, two writers, a full or
read-only disk, damaged chunks and metadata, a store replaced under a reader, Ctrl-C, bad options.

Every case ends in a one-line `error:` and a non-zero exit, with nothing already written lost;
`featstore verify` passes on what is stored, and a re-run completes or repairs the store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zarr
from click.testing import CliRunner

from featstore import open_store
from featstore.cli import main
from featstore.errors import FeatstoreError
from featstore.ingest import IngestSummary, ingest
from featstore.layout import INDEX_KEY, ROOT_KEY, set_attribute
from featstore.lock import LOCK_FILE, STALE_AFTER_SECONDS, StoreLocked, WriterLock, read_holder
from featstore.reader import StoreChanged
from featstore.sample import SampleCorpus
from featstore.storage import locate

from conftest import quiet_ingest

QUICK = ["--workers", "1", "--dashboard-address", "127.0.0.1:0", "--no-progress"]


def run(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    """The featstore command in a real process."""
    return subprocess.run(
        [sys.executable, "-m", "featstore.cli", *args], capture_output=True, text=True, timeout=300, **options
    )


def in_process(*args: str) -> subprocess.CompletedProcess[str]:
    """The featstore command run in this process (for errors found before any work starts: fast)."""
    result = CliRunner().invoke(main, list(args))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def assert_one_line_error(result: subprocess.CompletedProcess[str], match: str, code: int = 2) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and match in errors[0], result.stderr


def verified(store: Path) -> int:
    """Utterances `featstore verify` checked; fails the test when verify does not pass."""
    result = run("verify", str(store))
    assert result.returncode == 0, result.stdout + result.stderr
    return int(result.stdout.splitlines()[-1].split()[1])


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def strict_json(data: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(data, parse_constant=refuse)


@pytest.fixture
def corpus_copy(corpus: SampleCorpus, tmp_path: Path) -> Path:
    """A private copy of the corpus, for tests that point destructive options at it."""
    target = tmp_path / "input" / "train_tarred"
    shutil.copytree(corpus.split_dir, target)
    return target


# --- destructive options -------------------------------------------------------------------


@pytest.mark.parametrize("where", ["the input", "inside the input", "around the input"])
def test_overwrite_refuses_the_input_and_what_is_inside_or_around_it(corpus_copy: Path, where: str) -> None:
    out = {"the input": corpus_copy, "inside the input": corpus_copy / "x.zarr", "around the input": corpus_copy.parent}
    before = files_of(corpus_copy.parent)
    for flags in (["--overwrite"], []) if where == "the input" else (["--overwrite"],):
        result = run("ingest", str(corpus_copy), "--out", str(out[where]), *flags, *QUICK)
        assert_one_line_error(result, "is the input")
    assert files_of(corpus_copy.parent) == before


def test_an_ordinary_directory_or_a_file_is_never_replaced(corpus: SampleCorpus, tmp_path: Path) -> None:
    folder, file = tmp_path / "photos", tmp_path / "notes.txt"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    file.write_text("precious")
    assert_one_line_error(
        run("ingest", str(corpus.split_dir), "--out", str(folder), "--overwrite", *QUICK), "not a featstore store"
    )
    assert_one_line_error(run("ingest", str(corpus.split_dir), "--out", str(file), "--overwrite", *QUICK), "is a file")
    assert (folder / "holiday.jpg").read_bytes() == b"precious" and file.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]


@pytest.mark.parametrize("split", ["../../x", "/tmp/evil", "a/b", "..", ""])
def test_sample_split_that_leaves_out_is_refused(tmp_path: Path, split: str) -> None:
    out = tmp_path / "deep" / "er" / "out"
    assert_one_line_error(in_process("sample", str(out), "--split", split), "--split")
    assert not (tmp_path / "deep").exists() and not Path("/tmp/evil_tarred").exists()


# --- one writer at a time ------------------------------------------------------------------


def test_two_writers_started_together_one_exits_2_and_the_store_stays_valid(
    corpus: SampleCorpus, tmp_path: Path
) -> None:
    out = tmp_path / "two.zarr"
    command = [sys.executable, "-m", "featstore.cli", "ingest", str(corpus.split_dir), "--out", str(out), *QUICK]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [(p.wait(timeout=300), *p.communicate()) for p in (first, second)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    assert "Traceback" not in loser
    assert "being written by another featstore (pid " in loser and " started 20" in loser, loser
    assert not (out / LOCK_FILE).exists()
    assert verified(out) == 29
    rerun = run("ingest", str(corpus.split_dir), "--out", str(out), *QUICK)
    assert rerun.returncode == 0 and "0 ingested, 3 already complete" in rerun.stdout, rerun.stderr


def _write_lock(store: Path, **holder: Any) -> None:
    lock = {"pid": os.getpid(), "host": os.uname().nodename, "started": "2026-01-01T00:00:00Z", "token": "t"}
    (store / LOCK_FILE).write_text(json.dumps({**lock, "refreshed": time.time(), **holder}))


def test_a_held_lock_refuses_a_writer_naming_its_holder_and_unlock_breaks_it(store_copy: Path) -> None:
    _write_lock(store_copy)  # held by this test process: alive, on this host
    holder = read_holder(locate(store_copy))
    assert holder is not None and holder.stale_because(time.time()) is None
    with pytest.raises(StoreLocked, match=f"pid {os.getpid()} on {os.uname().nodename}, started 2026-01-01"):
        WriterLock.acquire(locate(store_copy), note=print)
    assert_one_line_error(run("unlock", str(store_copy)), "still runs")
    assert (store_copy / LOCK_FILE).exists()
    result = run("unlock", str(store_copy), "--force")
    assert result.returncode == 0 and f"pid {os.getpid()}" in result.stdout
    assert not (store_copy / LOCK_FILE).exists() and verified(store_copy) == 29


def test_stale_locks_are_taken_over_with_a_note(store_copy: Path) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # its pid no longer runs on this host
    notes: list[str] = []
    for stale in ({"pid": finished.pid}, {"host": "elsewhere", "refreshed": time.time() - STALE_AFTER_SECONDS - 60}):
        _write_lock(store_copy, **stale)
        lock = WriterLock.acquire(locate(store_copy), note=notes.append)
        holder = strict_json((store_copy / LOCK_FILE).read_bytes())
        assert holder["pid"] == os.getpid() and holder["host"] == os.uname().nodename and holder["started"]
        lock.release()
        assert not (store_copy / LOCK_FILE).exists()
    assert "no longer runs on this host" in notes[0] and "not refreshed for" in notes[1]
    _write_lock(store_copy, host="elsewhere")  # refreshed just now on another host: not stale
    with pytest.raises(StoreLocked, match="on elsewhere"):
        WriterLock.acquire(locate(store_copy), note=notes.append)


# --- faults --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """A real tmpfs of a given size (root only); yields a function that resizes it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    # Mounted small; the test sizes it from a reference store (see room_for_the_first_shard_only).
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the file-size-limit test covers EFBIG")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def room_for_the_first_shard_only(reference: Path) -> int:
    """tmpfs bytes that hold the store's metadata twice (atomic rewrites) and its first shard, not the second.

    Measured on the same store ingested elsewhere, in tmpfs pages: the bytes differ between
    zarr and numcodecs versions, so a fixed size fits one shard on one Python and none on another.
    """

    def pages(files: Iterator[Path]) -> int:
        return sum(4096 * -(-f.stat().st_size // 4096) for f in files if f.is_file())

    first, second = sorted((reference / "shards").iterdir())[:2]
    metadata = pages(f for f in reference.rglob("*") if "shards" not in f.relative_to(reference).parts[:1])
    metadata += pages(iter([reference / "shards" / "zarr.json"]))
    return 2 * metadata + pages(first.rglob("*")) + pages(second.rglob("*")) // 2 + 4 * 4096


def test_a_full_disk_is_one_line_keeps_what_is_complete_and_a_rerun_completes(
    corpus: SampleCorpus, tmp_path: Path, small_disk: Callable[[str], None], ingested: tuple[Path, IngestSummary]
) -> None:
    out = tmp_path / "disk" / "feats.zarr"
    small_disk(str(room_for_the_first_shard_only(ingested[0])))
    failed = run("ingest", str(corpus.split_dir), "--out", str(out), *QUICK)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, failed.stderr
    assert "No space left on device" in failed.stdout + failed.stderr
    assert 0 < verified(out) < 29  # the shard that completed before the disk filled is kept, and consistent
    small_disk("16m")
    done = run("ingest", str(corpus.split_dir), "--out", str(out), *QUICK)
    assert done.returncode == 0, done.stderr
    assert verified(out) == 29
    assert open_store(out).checksums == open_store(ingested[0]).checksums


@pytest.mark.slow  # the tmpfs test above covers a full disk where it can mount one
def test_a_file_size_limit_fails_the_shards_and_a_rerun_completes(corpus: SampleCorpus, tmp_path: Path) -> None:
    import resource

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "limited.zarr"
    failed = run("ingest", str(corpus.split_dir), "--out", str(out), *QUICK, preexec_fn=limit_files)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr
    assert "File too large" in failed.stdout + failed.stderr
    assert verified(out) < 29
    assert run("ingest", str(corpus.split_dir), "--out", str(out), *QUICK).returncode == 0
    assert verified(out) == 29


def test_a_read_only_output_is_one_line(corpus: SampleCorpus, ingested: tuple[Path, IngestSummary]) -> None:
    # A read-only bind mount: it refuses root's writes too (EROFS), and the command runs as
    # root from the test environment (a user such as nobody could not read tox's private venv).
    shared = Path(tempfile.mkdtemp(prefix="featstore-readonly-"))
    shutil.copytree(corpus.split_dir, shared / "train_tarred")
    shutil.copytree(ingested[0], shared / "feats.zarr")
    mounted = not subprocess.run(["mount", "--bind", str(shared), str(shared)], capture_output=True).returncode
    try:
        if (
            not mounted
            or subprocess.run(["mount", "-o", "remount,ro,bind", str(shared)], capture_output=True).returncode
        ):
            pytest.skip("cannot make a read-only bind mount here (needs root)")
        for out in ("new.zarr", "feats.zarr"):
            result = run("ingest", str(shared / "train_tarred"), "--out", str(shared / out), *QUICK)
            assert_one_line_error(result, "Read-only file system")
        assert not (shared / "new.zarr").exists()
        assert verified(shared / "feats.zarr") == 29
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(shared)], check=False)
        shutil.rmtree(shared)


# --- damaged stores ------------------------------------------------------------------------


def _first_chunk(store: Path, shard: str) -> Path:
    return sorted((store / "shards" / shard).glob("b*/c/0"))[0]


@pytest.mark.parametrize("damage", ["truncated", "garbled header"])
def test_a_damaged_chunk_names_its_shard_and_a_redo_repairs_it(
    corpus: SampleCorpus, store_copy: Path, damage: str
) -> None:
    chunk = _first_chunk(store_copy, "audio_1")
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff" * 16 + data[16:])
    assert_one_line_error(run("verify", str(store_copy)), "shard audio_1")
    store = open_store(store_copy)
    first = store.shard_names.index("audio_1")
    with pytest.raises(FeatstoreError, match="shard audio_1: audio chunk .* is corrupt"):
        [store.audio(i) for i in range(len(store)) if store.shard_codes[i] == first]
    if damage != "truncated":
        return  # the repair is the same for both
    assert run("repair", str(store_copy), "--redo", "audio_1").returncode == 0
    assert "audio_1" not in open_store(store_copy).shard_names and verified(store_copy) == 29 - 12
    summary = quiet_ingest(corpus.split_dir, store_copy, workers=1)
    assert summary.shards_done == ["audio_1"] and verified(store_copy) == 29


@pytest.mark.parametrize("damage", ["deleted", "garbled"])
def test_a_lost_index_is_rebuilt_by_repair_or_by_a_rerun(corpus: SampleCorpus, store_copy: Path, damage: str) -> None:
    before = open_store(store_copy)
    index_json = store_copy / "index" / "zarr.json"
    for rebuild in ("repair", "rerun") if damage == "deleted" else ("repair",):
        if damage == "deleted":
            index_json.unlink()
        else:
            index_json.write_text('{"zarr_format": 3, "node_type": "gro')
        assert_one_line_error(run("info", str(store_copy)), "index is missing or unreadable")
        if rebuild == "repair":
            result = run("repair", str(store_copy))
            assert result.returncode == 0 and "index rebuilt from 3 complete shard(s)" in result.stdout, result.stderr
            assert "re-run the ingest to restore" in result.stdout  # manifest-level rejects live in the index alone
        else:
            assert quiet_ingest(corpus.split_dir, store_copy, workers=1).shards_skipped == before.shard_names
            assert open_store(store_copy).rejects == before.rejects
        assert verified(store_copy) == 29
        assert open_store(store_copy).checksums == before.checksums


def test_missing_root_settings_are_restored_by_a_rerun(corpus: SampleCorpus, store_copy: Path) -> None:
    root = zarr.open_group(str(store_copy), mode="r+")
    meta = dict(root.attrs[ROOT_KEY])  # type: ignore[arg-type]
    del meta["settings"]["alphabet"]
    root.attrs[ROOT_KEY] = meta
    for command in ("info", "verify"):
        assert_one_line_error(run(command, str(store_copy)), "settings lack alphabet")
    notes: list[str] = []
    summary = ingest(corpus.split_dir, store_copy, workers=1, dashboard_address="127.0.0.1:0", echo=notes.append)
    assert summary.shards_done == [] and any("settings were missing" in note for note in notes)
    assert verified(store_copy) == 29


def test_a_shard_group_without_its_metadata_is_redone(corpus: SampleCorpus, store_copy: Path) -> None:
    before = open_store(store_copy).checksums
    (store_copy / "shards" / "audio_2" / "zarr.json").unlink()
    summary = quiet_ingest(corpus.split_dir, store_copy, workers=1)
    assert summary.shards_done == ["audio_2"]
    assert verified(store_copy) == 29 and open_store(store_copy).checksums == before


def test_a_reader_of_a_store_replaced_by_overwrite_is_told_to_reopen(corpus: SampleCorpus, store_copy: Path) -> None:
    reader = open_store(store_copy)
    quiet_ingest(corpus.split_dir, store_copy, shard_selection={2}, overwrite=True, workers=1)
    with pytest.raises(StoreChanged, match="changed since it was opened.*reopen"):
        reader.audio(0)
    with pytest.raises(StoreChanged, match="reopen"):
        reader.record(len(reader) - 1)
    assert open_store(store_copy).shard_names == ["audio_2"] and verified(store_copy) == 12


def test_every_json_the_store_holds_is_strict_json(store_copy: Path) -> None:
    for path in store_copy.rglob("zarr.json"):
        strict_json(path.read_bytes())
    group = zarr.open_group(str(store_copy / "index"), mode="r+")
    with pytest.raises(ValueError, match="not JSON compliant"):
        set_attribute(group, INDEX_KEY, {"level_db": [float("nan")]})
    assert strict_json((store_copy / "index" / "zarr.json").read_bytes())["attributes"][INDEX_KEY]["shards"]


# --- Ctrl-C --------------------------------------------------------------------------------


def _interrupt(command: list[str], when: Callable[[psutil.Process, str], bool]) -> subprocess.CompletedProcess[str]:
    """Start `command` in its own process group and send SIGINT to the whole group once `when` holds."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,
            # As from a terminal: a test run started in the background inherits SIGINT ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        watched, deadline = psutil.Process(process.pid), time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            out.seek(0)
            if when(watched, out.read()):
                os.killpg(process.pid, signal.SIGINT)
                break
            time.sleep(0.05)
        code = process.wait(timeout=120)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(command, code, out.read(), err.read())


def _ignores_sigint(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn")).split()[1], 16)
    return bool(ignored & (1 << (signal.SIGINT - 1)))


@pytest.mark.parametrize(
    "moment",
    [
        pytest.param("while ingesting", id="ingesting"),
        pytest.param("while the cluster starts", id="cluster-start"),
    ],
)
@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_and_a_rerun_resumes(corpus: SampleCorpus, tmp_path: Path, moment: str) -> None:
    out = tmp_path / "interrupted.zarr"
    command = [sys.executable, "-m", "featstore.cli", "ingest", str(corpus.split_dir), "--out", str(out)]
    command += ["--workers", "2", "--dashboard-address", "127.0.0.1:0", "--no-progress"]

    def when(process: psutil.Process, stdout: str) -> bool:
        if moment == "while ingesting" or "Dask dashboard" in stdout:
            return "Dask dashboard" in stdout
        # A worker process has started (with SIGINT ignored from its first instant), and the
        # cluster is not up yet.
        workers = [c for c in process.children(recursive=True) if "resource_tracker" not in " ".join(c.cmdline())]
        return any(_ignores_sigint(worker.pid) for worker in workers)

    result = _interrupt(command, when)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "interrupted; re-run to resume"
    for forbidden in ("Traceback", "KeyboardInterrupt", "Status.init"):
        assert forbidden not in result.stderr, result.stderr
    assert not (out / LOCK_FILE).exists()
    assert run("ingest", str(corpus.split_dir), "--out", str(out), *QUICK).returncode == 0
    assert verified(out) == 29


# --- options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--memory-limit", "1KiB"], "below the minimum of 256"),
        (["--memory-limit", "lots"], "not a size"),
        (["--dashboard-address", "bogus::x"], "not HOST:PORT"),
        (["--dashboard-address", "host:99999"], "not HOST:PORT"),
        (["--min-duration", "nan"], "--min-duration"),
    ],
)
def test_bad_ingest_options_are_one_line(corpus: SampleCorpus, tmp_path: Path, args: list[str], match: str) -> None:
    assert_one_line_error(in_process("ingest", str(corpus.split_dir), "--out", str(tmp_path / "o.zarr"), *args), match)
    assert not (tmp_path / "o.zarr").exists()


def test_bad_sample_and_inspect_options_are_one_line(ingested: tuple[Path, IngestSummary], tmp_path: Path) -> None:
    assert_one_line_error(in_process("sample", str(tmp_path / "s"), "--alphabet", ""), "--alphabet")
    assert_one_line_error(in_process("sample", str(tmp_path / "s"), "--alphabet", "  "), "--alphabet")
    assert_one_line_error(run("inspect", str(ingested[0]), "--report", str(tmp_path)), "is a directory")
    assert_one_line_error(in_process("inspect", str(ingested[0]), "--memory-limit", "1KiB"), "below the minimum")
    assert not (tmp_path / "s").exists()
