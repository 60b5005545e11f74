"""Ingest benchmark: `featstore ingest` against the notebook's pipeline and the bare decode rate.

On one generated corpus (default 8 shards, 2.8 h of webm/opus audio), in the same run:
  (a) `featstore ingest` through its CLI with 2 Dask workers;
  (b) bare decode: each tar.xz read once, decode + resample + normalize, store nothing, with
      the same number of processes (the practical limit of this machine);
  (c) the notebook's pipeline (bench/notebook_pipeline.py, in the venv with torchcodec).
For each: wall time, peak memory of the whole process tree (RSS and PSS, sampled every 0.2 s),
peak extra disk beyond the output, output bytes per audio hour. Then the store's SNR against
`Wav2Vec2FeatureExtractor(do_normalize=True)` on the same decoded audio, and featstore ingest on
fewer shards to show that its peak memory does not grow with the data. Targets: issue 2.

    python bench/ingest.py --repeat 2            # the full run (~15 min here)
    python bench/ingest.py --clips 12 --scale 2  # a quick check
    python bench/ingest.py --shards 8 --clips 440 --repeat 3 --skip-notebook --scale "" --marginal 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from results import save_json

from corpus import CACHE_ROOT, Corpus, ensure_corpus, source_fingerprint
from procmon import RunStats, run_monitored, tree_size

BENCH = Path(__file__).resolve().parent
MB = 1e6
GB = 1e9


def run_featstore(corpus: Corpus, workers: int, scratch: Path, max_shards: int | None = None) -> tuple[RunStats, Path]:
    shutil.rmtree(scratch, ignore_errors=True)
    out = scratch / "feats.zarr"
    command = [
        str(Path(sys.executable).with_name("featstore")),
        "ingest",
        str(corpus.split_dir),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--dashboard-address",
        "127.0.0.1:0",
        "--no-progress",
    ]
    if max_shards:
        command += ["--max-shards", str(max_shards)]
    name = f"featstore ingest ({max_shards or corpus.shards} shards)"
    return run_monitored(name, command, scratch, exclude=[out]), out


def run_bare(
    corpus: Corpus, workers: int, scratch: Path, max_shards: int | None = None
) -> tuple[RunStats, dict[str, Any]]:
    shutil.rmtree(scratch, ignore_errors=True)
    command = [sys.executable, str(BENCH / "bare_decode.py"), str(corpus.split_dir), "--processes", str(workers)]
    if max_shards:
        command += ["--max-shards", str(max_shards)]
    stats = run_monitored(f"bare decode ({max_shards or corpus.shards} shards)", command, scratch)
    return stats, json.loads(stats.stdout_tail.strip().splitlines()[-1])


def marginal(
    corpus: Corpus, workers: int, work: Path, shards: int, runs: dict[str, list[dict[str, Any]]], repeat: int
) -> dict[str, Any]:
    """(a) and (b) on the first `shards` shards; what the rest of the corpus cost each, in CPU and wall seconds.

    The difference from the whole corpus's runs of this repeat leaves out what both pay once
    (imports, process and cluster start-up), which a 27-shard corpus of 2 GB shards amortizes.
    """
    fs_stats, _ = run_featstore(corpus, workers, work / "featstore_marginal", max_shards=shards)
    bare_stats, _ = run_bare(corpus, workers, work / "bare_marginal", max_shards=shards)
    fs, bare = runs["featstore"][-1], runs["bare"][-1]
    fs_cpu, bare_cpu = fs["cpu_s"] - fs_stats.cpu_s, bare["cpu_s"] - bare_stats.cpu_s
    fs_wall, bare_wall = fs["wall_s"] - fs_stats.wall_s, bare["wall_s"] - bare_stats.wall_s
    return {
        "repeat": repeat,
        "shards": f"{shards} -> {corpus.shards}",
        "featstore_cpu_s": round(fs_cpu, 1),
        "bare_cpu_s": round(bare_cpu, 1),
        "cpu_ratio": round(fs_cpu / bare_cpu, 3),
        "featstore_wall_s": round(fs_wall, 1),
        "bare_wall_s": round(bare_wall, 1),
        "rate_vs_bare": round(bare_wall / fs_wall, 3),
        "start_up_cpu_s": {
            "featstore": round(fs_stats.cpu_s - fs_cpu * shards / (corpus.shards - shards), 1),
            "bare": round(bare_stats.cpu_s - bare_cpu * shards / (corpus.shards - shards), 1),
        },
    }


def run_notebook(corpus: Corpus, python: str, scratch: Path) -> tuple[RunStats, Path, dict[str, Any]]:
    shutil.rmtree(scratch, ignore_errors=True)
    output = scratch / "temp_shards"
    command = [python, str(BENCH / "notebook_pipeline.py"), str(corpus.split_dir), "--work", str(scratch)]
    env = {
        "HF_DATASETS_CACHE": str(scratch / "hf_cache"),
        "HF_HUB_OFFLINE": "1",
        "LD_LIBRARY_PATH": torchcodec_library_path(python),
    }
    stats = run_monitored("notebook pipeline", command, scratch, exclude=[output], env=env)
    detail = json.loads(stats.stdout_tail.strip().splitlines()[-1]) if stats.returncode == 0 else {}
    return stats, output, detail


def torchcodec_library_path(python: str) -> str:
    """LD_LIBRARY_PATH that lets torchcodec 0.13 load FFmpeg 8: PyAV's bundled copies, under plain names.

    torchcodec needs libavutil.so.60 & co. (no system FFmpeg here); PyAV's wheel ships them as
    av.libs/libavutil-<hash>.so.60, so links with the plain names go in a folder of our own.
    """
    libs = next(Path(python).absolute().parent.parent.glob("lib/python3*/site-packages/av.libs"))
    links = CACHE_ROOT / "ffmpeg-libs"
    links.mkdir(parents=True, exist_ok=True)
    for lib in libs.glob("lib[as][vw]*.so.*"):  # libav*, libsw*
        stem, major = lib.name.split("-")[0], lib.name.split(".so.")[1].split(".")[0]
        link = links / f"{stem}.so.{major}"
        if not link.exists():
            link.symlink_to(lib)
    return f"{links}:{libs}"


def arrow_audio_seconds(output: Path) -> float:
    """Audio seconds in the notebook's saved chunks: the lengths of its input_values lists."""
    samples = 0
    for path in output.rglob("*.arrow"):
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all()
            samples += int(pc.sum(pc.list_value_length(table.column("input_values"))).as_py())
    return samples / 16_000


def store_snr(store_path: Path, corpus: Corpus) -> dict[str, float]:
    """SNR of every stored utterance against the feature extractor's output on the same decoded audio."""
    import tarfile

    from transformers import Wav2Vec2FeatureExtractor

    from featstore import open_store
    from featstore.audio import decode_clip, snr_db

    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    store = open_store(store_path)
    where = {store.record(i)["audio_filepath"]: i for i in range(len(store))}
    snrs, max_errors = [], []
    for shard in sorted(corpus.split_dir.rglob("audio_*.tar.xz")):
        with tarfile.open(shard, mode="r|*") as tar:
            for member in tar:
                stream = tar.extractfile(member)
                if stream is None or member.name not in where:
                    continue
                reference = extractor(decode_clip(stream.read()), sampling_rate=16000).input_values[0]
                stored = store.audio(where[member.name])
                snrs.append(snr_db(reference, stored))
                max_errors.append(float(np.abs(reference - stored).max()))
    return {
        "utterances": len(snrs),
        "min_db": min(snrs),
        "median_db": statistics.median(snrs),
        "max_abs_error": max(max_errors),
    }


def row(stats: RunStats, audio_s: float, output_bytes: int | None, output_hours: float | None) -> dict[str, Any]:
    return {
        "name": stats.name,
        "returncode": stats.returncode,
        "wall_s": round(stats.wall_s, 2),
        "x_realtime": round(audio_s / stats.wall_s, 1),
        "cpu_s": round(stats.cpu_s, 1),
        "audio_s_per_cpu_s": round(audio_s / stats.cpu_s, 1),
        "load_before": round(stats.loadavg_before, 2),
        "peak_rss_mb": round(stats.peak_rss_bytes / MB, 1),
        "peak_pss_mb": round(stats.peak_pss_bytes / MB, 1),
        "processes": stats.peak_processes,
        "extra_disk_mb": round(stats.peak_extra_disk_bytes / MB, 2),
        "output_mb": round(output_bytes / MB, 2) if output_bytes is not None else None,
        "output_mb_per_audio_h": round(output_bytes / MB / output_hours, 1) if output_bytes and output_hours else None,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [
        "name",
        "wall_s",
        "x_realtime",
        "cpu_s",
        "audio_s_per_cpu_s",
        "load_before",
        "peak_rss_mb",
        "peak_pss_mb",
        "processes",
        "extra_disk_mb",
        "output_mb",
        "output_mb_per_audio_h",
    ]
    widths = [max(len(c), *(len(str(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--clips", type=int, default=220, help="clips per shard")
    parser.add_argument("--words", type=int, nargs=2, default=(6, 14), help="words per clip (6-14: 2.5-10 s clips)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", default="2,4", help="also ingest only this many shards (peak memory flatness)")
    parser.add_argument("--repeat", type=int, default=1, help="repeat (a), (b), (c); the best wall time is compared")
    parser.add_argument("--bench-python", default=".venv-bench/bin/python", help="python with torchcodec 0.13")
    parser.add_argument("--skip-notebook", action="store_true")
    parser.add_argument("--skip-snr", action="store_true")
    parser.add_argument(
        "--marginal",
        type=int,
        help="also run (a) and (b) on this many shards each repeat: the CPU of the other shards, start-up excluded",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "ingest.json")
    args = parser.parse_args()

    corpus = ensure_corpus(args.shards, args.clips, tuple(args.words))
    for path in corpus.split_dir.rglob("*"):  # page cache warm for every run alike
        if path.is_file():
            path.read_bytes()
    hours = corpus.audio_seconds / 3600
    print(
        f"corpus {corpus.root}: {corpus.shards} shards, {corpus.clips} clips, {hours:.2f} h, "
        f"{corpus.compressed_bytes / MB:.1f} MB compressed",
        flush=True,
    )
    work = CACHE_ROOT / "run"
    runs: dict[str, list[dict[str, Any]]] = {"featstore": [], "bare": [], "notebook": []}
    marginals: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpu": _cpu(),
        "code": source_fingerprint(),
        "args": vars(args) | {"out": str(args.out)},
        "corpus": {
            "root": str(corpus.root),
            "shards": corpus.shards,
            "clips": corpus.clips,
            "audio_h": hours,
            "compressed_mb": corpus.compressed_bytes / MB,
        },
        "runs": runs,
        "marginal": marginals,
        "failures": failures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every run, so that a late failure loses nothing
        save_json(result, args.out)

    def ok(stats: RunStats) -> bool:
        print(f"[{repeat}] {stats.name}: {stats.wall_s:.1f} s, rc {stats.returncode}", flush=True)
        if stats.returncode != 0:
            failures.append({"name": stats.name, "repeat": repeat, "output": stats.stdout_tail})
            print(stats.stdout_tail[-1500:], flush=True)
        return stats.returncode == 0

    store: Path | None = None
    notebook_detail: dict[str, Any] = {}
    for repeat in range(args.repeat):
        stats, out = run_featstore(corpus, args.workers, work / "featstore")
        if ok(stats):
            store = out
            store_hours = float(np.sum(_store_lengths(store))) / 16_000 / 3600
            runs["featstore"].append(
                row(stats, corpus.audio_seconds, tree_size(store), store_hours)
                | {"repeat": repeat, "stdout": stats.stdout_tail, "timeline": stats.timeline}
            )
        save()
        stats, bare = run_bare(corpus, args.workers, work / "bare")
        if ok(stats):
            runs["bare"].append(row(stats, bare["audio_s"], None, None) | {"repeat": repeat, "detail": bare})
        save()
        if args.marginal and runs["featstore"] and runs["bare"]:
            marginals.append(marginal(corpus, args.workers, work, args.marginal, runs, repeat))
            print(f"[{repeat}] marginal: {marginals[-1]}", flush=True)
            save()
        if not args.skip_notebook:
            stats, output, detail = run_notebook(corpus, args.bench_python, work / "notebook")
            if ok(stats):
                notebook_detail = detail
                arrow_hours = arrow_audio_seconds(output) / 3600
                runs["notebook"].append(
                    row(stats, corpus.audio_seconds, tree_size(output), arrow_hours)
                    | {"repeat": repeat, "detail": detail, "timeline": stats.timeline}
                )
            save()

    scale: list[dict[str, Any]] = []
    result["scale"] = scale
    for shards in [int(s) for s in args.scale.split(",") if s]:
        stats, _ = run_featstore(corpus, args.workers, work / f"featstore_{shards}", max_shards=shards)
        if ok(stats):
            scale.append(
                {
                    "shards": shards,
                    "wall_s": round(stats.wall_s, 2),
                    "peak_rss_mb": round(stats.peak_rss_bytes / MB, 1),
                    "peak_pss_mb": round(stats.peak_pss_bytes / MB, 1),
                }
            )
        shutil.rmtree(work / f"featstore_{shards}", ignore_errors=True)
        save()
    best = {key: min(value, key=lambda r: r["wall_s"]) for key, value in runs.items() if value}
    scale.append(
        {
            "shards": corpus.shards,
            "wall_s": best["featstore"]["wall_s"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs["featstore"]),
            "peak_pss_mb": max(r["peak_pss_mb"] for r in runs["featstore"]),
        }
    )
    assert store is not None
    if not args.skip_snr:
        print("SNR: decoding every clip again for the feature extractor ...", flush=True)
    snr = None if args.skip_snr else store_snr(store, corpus)
    result["snr"] = snr  # null when skipped

    fs, bare_row = best["featstore"], best["bare"]
    fs_peak = max(r["peak_rss_mb"] for r in runs["featstore"])
    peaks = [s["peak_rss_mb"] for s in scale]
    paired = _paired(runs, "featstore", "bare", lambda f, b: b["wall_s"] / f["wall_s"])
    checks: dict[str, dict[str, Any]] = {
        "rate vs bare decode >= 0.85": _check(bare_row["wall_s"] / fs["wall_s"], 0.85, ">="),
        "peak RSS < 1 GB (2 workers)": _check(fs_peak / 1000, 1.0, "<"),
        "peak RSS flat 2->8 shards (max/min <= 1.15)": _check(max(peaks) / min(peaks), 1.15, "<="),
        "extra disk == 0": _check(fs["extra_disk_mb"], 0.0, "<="),
    }
    if snr is not None:
        checks["SNR min >= 60 dB"] = _check(snr["min_db"], 60.0, ">=")
    info = {
        "rate vs bare, median of same-repeat pairs": statistics.median(paired) if paired else None,
        "rate vs bare, per CPU-second (best runs)": fs["audio_s_per_cpu_s"] / bare_row["audio_s_per_cpu_s"],
    }
    if "notebook" in best:
        nb = best["notebook"]
        nb_peak = min(r["peak_rss_mb"] for r in runs["notebook"])
        checks["speed vs notebook >= 2x"] = _check(nb["wall_s"] / fs["wall_s"], 2.0, ">=")
        checks["peak RSS <= 0.5 x notebook"] = _check(fs_peak / nb_peak, 0.5, "<=")
        checks["bytes/audio h <= 1/3 notebook Arrow"] = _check(
            fs["output_mb_per_audio_h"] / nb["output_mb_per_audio_h"], 1 / 3, "<="
        )
        paired_nb = _paired(runs, "featstore", "notebook", lambda f, n: n["wall_s"] / f["wall_s"])
        info["speed vs notebook, median of same-repeat pairs"] = statistics.median(paired_nb) if paired_nb else None
        info["speed vs notebook, per CPU-second (best runs)"] = fs["audio_s_per_cpu_s"] / nb["audio_s_per_cpu_s"]
        info["notebook internal pipeline s (best run, imports excluded)"] = nb["detail"]["stages_s"]["total"]
    result |= {"checks": checks, "info": info}
    save()

    print()
    print_table([r for key in ("featstore", "bare", "notebook") for r in runs[key]])
    for entry in marginals:
        print(f"marginal, repeat {entry['repeat']}: {entry}")
    print(
        "\nfeatstore peak memory by shards:",
        ", ".join(f"{s['shards']}: {s['peak_rss_mb']} MB RSS / {s['peak_pss_mb']} MB PSS" for s in scale),
    )
    if snr is not None:
        print(
            f"SNR over {snr['utterances']} utterances: min {snr['min_db']:.2f} dB, "
            f"median {snr['median_db']:.2f} dB, max abs error {snr['max_abs_error']:.2e}"
        )
    if notebook_detail:
        print(f"notebook stages (s): {notebook_detail['stages_s']}; workarounds: {notebook_detail['workarounds']}")
    print()
    for name, check in checks.items():
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {name}: {check['value']:.3g}")
    for name, value in info.items():
        print(f"info  {name}: {value if isinstance(value, (int, str)) or value is None else round(value, 3)}")
    print(f"\nwrote {args.out}")


def _store_lengths(store: Path) -> np.ndarray:
    from featstore import open_store

    return open_store(store).lengths


def _paired(runs: dict[str, list[dict[str, Any]]], a: str, b: str, ratio: Any) -> list[float]:
    """`ratio(run_a, run_b)` for each repeat in which both succeeded (runs adjacent in time)."""
    by_repeat = {r["repeat"]: r for r in runs[b]}
    return [ratio(r, by_repeat[r["repeat"]]) for r in runs[a] if r["repeat"] in by_repeat]


def _check(value: float, target: float, op: str) -> dict[str, Any]:
    passed = {"<": value < target, "<=": value <= target, ">=": value >= target}[op]
    return {"value": value, "target": f"{op} {target:.4g}", "pass": bool(passed)}


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
