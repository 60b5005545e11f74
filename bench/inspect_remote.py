"""Issue 4's benchmarks: `featstore inspect` against the naive per-utterance loop, and ingest of
HTTP-served shards against the same shards on local disk.

Both pairs run in the same invocation, alternating, so the shared machine's load hits them alike;
the table reports each run and the ratio. Memory is the peak of the whole process tree (Dask
workers included), sampled by bench/procmon.py.

    python bench/inspect_remote.py [--shards 8 --clips 60 --repeat 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from corpus import ensure_corpus
from procmon import RunStats, run_monitored

OUT = Path(__file__).parent / "out"
SCRATCH = Path("/tmp/featstore-bench/inspect_remote")
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


def featstore_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "featstore.cli", *args]


def serve(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A plain HTTP server on loopback for `folder`, as a separate process."""
    port_file = SCRATCH / "port"
    port_file.unlink(missing_ok=True)
    code = ("import http.server, functools, sys, pathlib; "
            "h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1]); "
            "s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), h); "
            "pathlib.Path(sys.argv[2]).write_text(str(s.server_address[1])); s.serve_forever()")
    process = subprocess.Popen([sys.executable, "-c", code, str(folder), str(port_file)], stderr=subprocess.DEVNULL)
    while not port_file.exists():
        time.sleep(0.05)
    time.sleep(0.1)
    return process, f"http://127.0.0.1:{port_file.read_text()}"


def summary(stats: RunStats) -> dict[str, Any]:
    return {"name": stats.name, "returncode": stats.returncode, "wall_s": round(stats.wall_s, 2),
            "peak_rss_mb": round(stats.peak_rss_bytes / 1e6, 1), "peak_pss_mb": round(stats.peak_pss_bytes / 1e6, 1),
            "load_before": round(stats.loadavg_before, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    corpus = ensure_corpus(args.shards, args.clips, (6, 14))
    SCRATCH.mkdir(parents=True, exist_ok=True)
    server, base = serve(corpus.root)
    common = ["--workers", str(args.workers), "--dashboard-address", "127.0.0.1:0", "--no-progress", "--overwrite"]
    runs: list[dict[str, Any]] = []
    try:
        for attempt in range(args.repeat):
            for name, source in (("ingest local", str(corpus.split_dir)), ("ingest http", f"{base}/train_tarred/")):
                out = SCRATCH / f"{name.replace(' ', '_')}.zarr"
                stats = run_monitored(name, featstore_cli("ingest", source, "--out", str(out), *common), SCRATCH / "work", exclude=[out])
                runs.append({**summary(stats), "attempt": attempt})
            store = SCRATCH / "ingest_local.zarr"
            inspect = run_monitored("inspect (dask)", featstore_cli("inspect", str(store), "--json", "--workers", str(args.workers),
                                                                    "--dashboard-address", "127.0.0.1:0"), SCRATCH / "work")
            naive = run_monitored("naive loop", [sys.executable, "-c", NAIVE_LOOP, str(store)], SCRATCH / "work")
            runs += [{**summary(inspect), "attempt": attempt}, {**summary(naive), "attempt": attempt}]
    finally:
        server.terminate()
    by_name: dict[str, list[float]] = {}
    for run in runs:
        by_name.setdefault(run["name"], []).append(run["wall_s"])
    best = {name: min(walls) for name, walls in by_name.items()}
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "corpus": {"shards": corpus.shards, "clips": corpus.clips, "audio_h": round(corpus.audio_seconds / 3600, 3)},
        "runs": runs,
        "best_wall_s": best,
        "http_over_local": round(best["ingest http"] / best["ingest local"], 3),
        "inspect_speedup_over_naive": round(best["naive loop"] / best["inspect (dask)"], 2),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "inspect_remote.json").write_text(json.dumps(result, indent=2))
    print(f"{'run':<16}{'attempt':>8}{'wall s':>9}{'peak RSS MB':>13}{'peak PSS MB':>13}{'load':>6}")
    for run in runs:
        print(f"{run['name']:<16}{run['attempt']:>8}{run['wall_s']:>9}{run['peak_rss_mb']:>13}{run['peak_pss_mb']:>13}{run['load_before']:>6}")
    print(f"HTTP ingest / local ingest (best of {args.repeat}): {result['http_over_local']}  (target <= 1.20)")
    print(f"naive loop / inspect (best of {args.repeat}): {result['inspect_speedup_over_naive']}x  (target > 1)")


if __name__ == "__main__":
    main()
