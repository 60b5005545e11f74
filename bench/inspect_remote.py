"""Issue 4's benchmarks: `featstore inspect` against the naive per-utterance loop, and ingest of
HTTP-served shards against the same shards on local disk.

Both pairs run in the same invocation, alternating, so the shared machine's load hits them alike;
the table reports each run and the ratios. Memory is the peak of the whole process tree (Dask
workers included), sampled by bench/procmon.py. Inspect and the naive loop also run on a store
of the first --small-shards shards of the same corpus: with memory flat, inspect's peak there
matches the full store's, and the time both take there shows how much of it is fixed cost.
Last, one run of inspect's steps in a fresh process says where its time goes.

    python bench/inspect_remote.py [--shards 8 --clips 220 --repeat 2 --inspect-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from corpus import ensure_corpus, source_fingerprint
from procmon import RunStats, run_monitored

OUT = Path(__file__).parent / "out"
SCRATCH = Path("/tmp/featstore-bench/inspect_remote")
# The baseline: every utterance through the reader API, measured with librosa, in one loop.
NAIVE_LOOP = """
import sys, time, numpy as np, librosa, featstore
from featstore.inspection import SILENCE_TOP_DB
store = featstore.open_store(sys.argv[1])
peaks, silences = [], []
for i in range(len(store)):
    audio = store.audio(i)
    _, (first, last) = librosa.effects.trim(audio, top_db=SILENCE_TOP_DB, frame_length=400, hop_length=160)
    peaks.append(float(np.abs(audio).max())); silences.append((first, audio.size - last))
print(len(peaks), "utterances measured")
"""
# The same loop with inspect's numpy trim (identical results, no librosa import): what the
# parallel tasks alone are worth against one process.
NAIVE_NUMPY = (
    NAIVE_LOOP.replace("librosa, ", "")
    .replace(
        "_, (first, last) = librosa.effects.trim(audio, top_db=SILENCE_TOP_DB, frame_length=400, hop_length=160)",
        "first, last = _trim_bounds(audio)",
    )
    .replace("import SILENCE_TOP_DB", "import _trim_bounds")
)
INSPECT, NAIVE, NAIVE_NP = "inspect (dask)", "naive loop", "naive, numpy trim"
# Inspect's steps, timed: wall and CPU seconds of the main process and each worker process.
PHASES = """
import json, resource, sys, time
started = time.perf_counter()
import dask
from featstore.ingest import dask_client
from featstore.inspection import inspect_store
from featstore.reader import open_store

def cpu():
    import resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 2)

phases = []
def phase(name, workers=None):
    phases.append({"phase": name, "end_s": round(time.perf_counter() - started, 2), "main_cpu_s": cpu(),
                   "workers_cpu_s": sorted(workers.values()) if workers else None})

store = open_store(sys.argv[1])
phase("imports, open the store")
with dask.config.set(scheduler="sync"):
    inspect_store(store)
phase("all the measuring, in this process alone (reference)")
with dask_client(int(sys.argv[2]), "2GiB", None, "127.0.0.1:0") as client:
    phase("start the cluster", client.run(cpu))
    inspect_store(store)
    phase("measure with the cluster", client.run(cpu))
phase("close the cluster")
print(json.dumps(phases))
"""
INSPECT_SMALL, NAIVE_SMALL = "inspect, small", "naive loop, small"


def featstore_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "featstore.cli", *args]


def serve(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A plain HTTP server on loopback for `folder`, as a separate process."""
    port_file = SCRATCH / "port"
    port_file.unlink(missing_ok=True)
    code = (
        "import http.server, functools, sys, pathlib; "
        "h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1]); "
        "s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), h); "
        "pathlib.Path(sys.argv[2]).write_text(str(s.server_address[1])); s.serve_forever()"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(folder), str(port_file)], stderr=subprocess.DEVNULL)
    while not port_file.exists():
        time.sleep(0.05)
    time.sleep(0.1)
    return process, f"http://127.0.0.1:{port_file.read_text()}"


def summary(stats: RunStats, attempt: int) -> dict[str, Any]:
    if stats.returncode:
        print(stats.stdout_tail, file=sys.stderr)
    return {
        "name": stats.name,
        "attempt": attempt,
        "returncode": stats.returncode,
        "wall_s": round(stats.wall_s, 2),
        "cpu_s": round(stats.cpu_s, 2),
        "peak_rss_mb": round(stats.peak_rss_bytes / 1e6, 1),
        "peak_pss_mb": round(stats.peak_pss_bytes / 1e6, 1),
        "load_before": round(stats.loadavg_before, 2),
        # distributed's nanny kills a worker that has not exited 4 s after it was asked to
        "workers_killed": "still alive after" in stats.stdout_tail,
    }


def inspect_command(store: Path, workers: int) -> list[str]:
    return featstore_cli(
        "inspect", str(store), "--json", "--workers", str(workers), "--dashboard-address", "127.0.0.1:0"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--clips", type=int, default=60, help="clips per shard")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--small-shards", type=int, default=2, help="shards of the store that shows memory is flat")
    parser.add_argument(
        "--inspect-only", action="store_true", help="skip the ingest pairs; inspect the store an earlier run left"
    )
    args = parser.parse_args()
    corpus = ensure_corpus(args.shards, args.clips, (6, 14))
    SCRATCH.mkdir(parents=True, exist_ok=True)
    work = SCRATCH / "work"
    store, small = SCRATCH / "ingest_local.zarr", SCRATCH / f"first_{args.small_shards}_shards.zarr"
    if args.inspect_only and not store.exists():
        sys.exit(f"{store} is missing: run once without --inspect-only")
    common = ["--workers", str(args.workers), "--dashboard-address", "127.0.0.1:0", "--no-progress", "--overwrite"]
    if not (args.inspect_only and small.exists()):
        subprocess.run(
            featstore_cli("ingest", str(corpus.split_dir), "--out", str(small), "--max-shards", str(args.small_shards))
            + common,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    load_start = os.getloadavg()
    server, base = serve(corpus.root)
    runs: list[dict[str, Any]] = []
    try:
        for attempt in range(args.repeat):
            if not args.inspect_only:
                for name, source in (("ingest local", str(corpus.split_dir)), ("ingest http", f"{base}/train_tarred/")):
                    out = SCRATCH / f"{name.replace(' ', '_')}.zarr"
                    command = featstore_cli("ingest", source, "--out", str(out), *common)
                    runs.append(summary(run_monitored(name, command, work, exclude=[out]), attempt))
            for name, command in (
                (INSPECT, inspect_command(store, args.workers)),
                (NAIVE, [sys.executable, "-c", NAIVE_LOOP, str(store)]),
                (NAIVE_NP, [sys.executable, "-c", NAIVE_NUMPY, str(store)]),
                (INSPECT_SMALL, inspect_command(small, args.workers)),
                (NAIVE_SMALL, [sys.executable, "-c", NAIVE_LOOP, str(small)]),
            ):
                runs.append(summary(run_monitored(name, command, work), attempt))
    finally:
        server.terminate()
    load_end = os.getloadavg()
    by_name: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_name.setdefault(run["name"], []).append(run)
    best = {name: min(r["wall_s"] for r in group) for name, group in by_name.items()}
    peak_pss = {name: max(r["peak_pss_mb"] for r in group) for name, group in by_name.items()}
    phases = json.loads(
        subprocess.run(
            [sys.executable, "-c", PHASES, str(store), str(args.workers)],
            cwd=work,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "code": source_fingerprint(),
        "corpus": {"shards": corpus.shards, "clips": corpus.clips, "audio_h": round(corpus.audio_seconds / 3600, 3)},
        "small_store_shards": args.small_shards,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "runs": runs,
        "best_wall_s": best,
        "max_peak_pss_mb": peak_pss,
        "inspect_speedup_over_naive": round(best[NAIVE] / best[INSPECT], 2),
        "inspect_speedup_over_naive_numpy_trim": round(best[NAIVE_NP] / best[INSPECT], 2),
        "inspect_peak_pss_full_over_small": round(peak_pss[INSPECT] / peak_pss[INSPECT_SMALL], 3),
        "inspect_phases": phases,
        "loadavg_after_phases": os.getloadavg(),
    }
    if not args.inspect_only:
        result["http_over_local"] = round(best["ingest http"] / best["ingest local"], 3)
    OUT.mkdir(exist_ok=True)
    (OUT / "inspect_remote.json").write_text(json.dumps(result, indent=2))
    print(f"load average at start {load_start}, at end {load_end}")
    header = f"{'run':<19}{'attempt':>8}{'wall s':>9}{'cpu s':>8}{'peak RSS MB':>13}{'peak PSS MB':>13}{'load':>6}"
    print(header + "  workers killed")
    for r in runs:
        print(
            f"{r['name']:<19}{r['attempt']:>8}{r['wall_s']:>9}{r['cpu_s']:>8}{r['peak_rss_mb']:>13}"
            f"{r['peak_pss_mb']:>13}{r['load_before']:>6}  {'yes' if r['workers_killed'] else 'no':>14}"
        )
    if not args.inspect_only:
        print(f"HTTP ingest / local ingest (best of {args.repeat}): {result['http_over_local']}  (target <= 1.20)")
    print(f"naive loop / inspect (best of {args.repeat}): {result['inspect_speedup_over_naive']}x  (target > 1)")
    print(f"naive loop with numpy trim / inspect: {result['inspect_speedup_over_naive_numpy_trim']}x")
    print(
        f"inspect peak PSS, {args.shards} shards / {args.small_shards} shards: "
        f"{result['inspect_peak_pss_full_over_small']}  (flat: about 1)"
    )
    print(f"inspect's steps (load average after: {result['loadavg_after_phases']})")
    print(f"{'step':<54}{'ends at s':>10}{'main cpu s':>11}  workers cpu s")
    for step in phases:
        print(f"{step['phase']:<54}{step['end_s']:>10}{step['main_cpu_s']:>11}  {step['workers_cpu_s'] or ''}")


if __name__ == "__main__":
    main()
