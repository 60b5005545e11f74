"""Peak memory of the ingest CLI as the corpus grows, without hours of audio: many tiny clips.

    python bench/ingest_memory.py --utterances 10000 1000000 --shards 100 --work /tmp/ingest-memory

For each size, writes a corpus in the real layout (one JSON-Lines manifest per shard, records
with `shard_id`; plain `.tar` shards, no compression to wait for) of 50 ms 16 kHz PCM WAV clips,
and runs `featstore ingest CORPUS --out STORE --workers 2 --min-duration 0.01 --no-progress` in a
child process, sampling every 50 ms the RSS of the CLI process itself (client, scheduler,
manifest scan, index updates) and of its whole tree (the Dask nanny and worker processes too).
What grows with the clips is the question: the workers' memory is bounded per shard by design,
the client's must not depend on the number of clips. Reported: peak RSS of each, per size, and
the growth from the smallest size to the largest.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from results import emit_json

from featstore.sample import MANIFEST_DIR

RATE = 16_000
CLIP_SECONDS = 0.05
VARIANTS = 16  # distinct clips, reused under unique names: content does not change the memory


def wav_bytes(rng: np.random.Generator) -> bytes:
    """A 50 ms clip: a tone plus noise at a speech-like level."""
    t = np.arange(int(RATE * CLIP_SECONDS)) / RATE
    audio = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + rng.normal(0, 0.02, t.size)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((audio * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def write_corpus(split_dir: Path, utterances: int, shards: int) -> None:
    rng = np.random.default_rng(0)
    clips = [wav_bytes(rng) for _ in range(VARIANTS)]
    manifest_dir = split_dir / MANIFEST_DIR
    (manifest_dir / "audio_shards").mkdir(parents=True)
    for shard, count in enumerate(np.diff(np.linspace(0, utterances, shards + 1).astype(int)).tolist()):
        lines = []
        with tarfile.open(manifest_dir / "audio_shards" / f"audio_{shard}.tar", mode="w") as tar:
            for n in range(count):
                name = f"clip_{shard}_{n}.wav"
                info = tarfile.TarInfo(name)
                data = clips[n % VARIANTS]
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                record = {"audio_filepath": name, "text": f"umwana {n % 97} amazi", "duration": CLIP_SECONDS}
                lines.append(json.dumps({**record, "shard_id": shard}))
        (manifest_dir / f"manifest_{shard}.json").write_text("\n".join(lines) + "\n")


def featstore_command() -> str:
    return str(Path(sys.executable).with_name("featstore"))


def peak_rss(command: list[str]) -> dict[str, Any]:
    """Run `command`; the peak RSS (MiB) of its own process and of its process tree, and its wall time."""
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process = psutil.Process(child.pid)
    peaks = {"cli": 0, "tree": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                own = process.memory_info().rss
                tree = own + sum(_rss(p) for p in process.children(recursive=True))
            except psutil.NoSuchProcess:
                return
            peaks["cli"], peaks["tree"] = max(peaks["cli"], own), max(peaks["tree"], tree)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{err[-2000:]}")
    return {
        "cli_peak_mb": round(peaks["cli"] / 2**20, 1),
        "tree_peak_mb": round(peaks["tree"] / 2**20, 1),
        "wall_seconds": round(time.monotonic() - started, 1),
        "stored": next((line for line in out.splitlines() if line.startswith("clips")), ""),
    }


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except psutil.NoSuchProcess:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--utterances", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ingest-memory"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    for utterances in args.utterances:
        folder = args.work / f"u{utterances}"
        shutil.rmtree(folder, ignore_errors=True)
        started = time.monotonic()
        write_corpus(folder / "train_tarred", utterances, args.shards)
        written = time.monotonic() - started
        command = [featstore_command(), "ingest", str(folder / "train_tarred"), "--out", str(folder / "feats.zarr")]
        command += ["--workers", "2", "--min-duration", "0.01", "--no-progress"]
        result = {"utterances": utterances, "shards": args.shards, "corpus_seconds": round(written, 1)}
        result.update(peak_rss(command))
        print(json.dumps(result, allow_nan=False), flush=True)
        results.append(result)
        shutil.rmtree(folder)
    first, last = results[0], results[-1]
    summary = {
        "runs": results,
        "cli_growth_mb": round(last["cli_peak_mb"] - first["cli_peak_mb"], 1),
        "tree_growth_mb": round(last["tree_peak_mb"] - first["tree_peak_mb"], 1),
        "load_average": psutil.getloadavg()[0],
    }
    emit_json(summary, args.json)


if __name__ == "__main__":
    main()
