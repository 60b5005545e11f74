"""Loader throughput: store -> padded batch (trainer) against the notebook's Arrow path.

Audio-seconds (real, unpadded) delivered per second of wall time by a DataLoader with one worker
(num_workers=1), one full epoch, each path in its own child process, in the same run:

- ours: `trainer.data.StoreDataset` + `trainer.data.collate` with
  `featstore.sampler.for_store(store, max_batch_seconds=S, seed=0)` (`trainer.data.make_loader`),
  each compact int16 batch turned into float32 audio + mask + labels by
  `trainer.data.model_inputs(batch, "cpu")` inside the timed loop, so both paths deliver the
  same model-ready tensors in the main process (`ours-w0`: the same with no worker);
- ours-augmented: ours with every waveform augmentation on (speed 0.9/1.0/1.1 with the
  speed-aware sampler, noise from `--noise-store` at 10-30 dB SNR, gain -6..6 dB), in the worker;
  `ours-speed` (speed only) and `ours-noise` (noise and gain only) take it apart;
- notebook: the same utterances (store.audio(i), already normalized float32, and the same label
  ids) written in pieces of 16 rows with `datasets.Dataset.from_generator` (list<float32> /
  list<int64>, as the notebook's `.map` produced) + `save_to_disk`, read back with
  `load_from_disk` (no format set, like `Trainer`), batched by transformers' `LengthGroupedSampler`
  (batch size chosen so batches per epoch match ours) and padded by the notebook's
  `DataCollatorCTCWithPadding` (feature_extractor.pad + tokenizer.pad, labels masked to -100).
  Its lengths are given to the sampler precomputed; the `Trainer` would instead infer them by
  reading every row of the dataset (`len(row["input_values"])`): that one-off cost is timed
  separately (`--infer-lengths`), not counted in the epoch;
- lhotse: the peer, a Lhotse Shar cut set of the same utterances + `DynamicBucketingSampler` +
  `K2SpeechRecognitionDataset` (`bench/lhotse_path.py`).

`PATH-wN` runs a path with N DataLoader workers (`ours-w0`, `ours-w2`, `lhotse-w2`, ...). Each
augmented path's throughput is divided by `ours`'s with as many workers, repetition by repetition.

Peak RSS is the sum over the child process and its DataLoader worker, sampled every 20 ms;
"flat" compares the tree RSS over the last quarter of the epoch's batches with the first quarter.

`--train K` also times K training steps (forward, backward, AdamW) of the trainer's
`tiny-random` Wav2Vec2ForCTC on CPU fed by each loader, and the time each step waited for data.

    python bench/trainer_loader.py /tmp/proto/big.zarr --seconds 100 --train 10 \
        --json bench/out/trainer-loader.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from results import save_json

SR = 16_000
# The augmented paths' `trainer.augment.AugmentOptions` (noise from `--noise-store` unless None).
EVERY_AUGMENTATION: dict[str, Any] = {"speeds": (0.9, 1.0, 1.1), "snr_db": (10.0, 30.0), "gain_db": (-6.0, 6.0)}
AUGMENTED: dict[str, dict[str, Any]] = {
    "augmented": EVERY_AUGMENTATION,
    "speed": {"speeds": EVERY_AUGMENTATION["speeds"], "noise_store": None},
    "noise": {**EVERY_AUGMENTATION, "speeds": ()},
}


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def tree_rss(processes: list[psutil.Process] | None = None) -> int:
    """RSS of this process and its children (`processes`: a cached list of them)."""
    if processes is None:
        me = psutil.Process()
        processes = [me, *me.children(recursive=True)]
    total = 0
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


class Monitor:
    """Samples the tree's RSS every `interval` s in a thread: `latest` and `peak`.

    Listing children scans all of /proc (~4 ms), so it is redone only every `rescan` samples;
    a per-batch scan in the timed loop used to cost ~0.5 s per epoch.
    """

    def __init__(self, interval: float = 0.02, rescan: int = 5) -> None:
        self.peak = self.latest = 0
        self.interval = interval
        self.rescan = rescan
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        processes: list[psutil.Process] = []
        sample = 0
        while not self._stop.is_set():
            if sample % self.rescan == 0:
                processes = [me, *me.children(recursive=True)]
            sample += 1
            self.latest = tree_rss(processes)
            self.peak = max(self.peak, self.latest)
            time.sleep(self.interval)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def processor_for(store: Any, directory: Path) -> Any:
    from trainer.config import TextOptions
    from trainer.vocab import build_processor, build_vocab

    text = TextOptions()
    return build_processor(build_vocab(text.normalize(t) for t in store.texts), directory)


@dataclass
class DataCollatorCTCWithPadding:
    """The notebook's collator (transformers 5: tokenizer.pad directly, no as_target_processor)."""

    processor: Any
    padding: bool | str = True

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        input_features = [{"input_values": feature["input_values"]} for feature in features]
        label_features = [{"input_ids": feature["labels"]} for feature in features]
        batch = self.processor.feature_extractor.pad(input_features, padding=self.padding, return_tensors="pt")
        labels_batch = self.processor.tokenizer.pad(label_features, padding=self.padding, return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        batch["labels"] = labels
        return batch


def build_arrow(store_path: str, arrow_dir: Path, proc_dir: Path) -> dict[str, Any]:
    import datasets

    import featstore
    from trainer.config import TextOptions
    from trainer.vocab import encode_labels

    datasets.disable_progress_bars()
    store = featstore.open_store(store_path)
    processor = processor_for(store, proc_dir)
    text = TextOptions()
    t0 = time.perf_counter()
    labels = [encode_labels(processor, text.normalize(store.texts[i])) for i in range(len(store))]
    t1 = time.perf_counter()

    def rows() -> Any:
        for i in range(len(store)):
            yield {"input_values": store.audio(i), "labels": labels[i]}

    features = datasets.Features(
        {
            "input_values": datasets.Sequence(datasets.Value("float32")),
            "labels": datasets.Sequence(datasets.Value("int64")),
        }
    )
    # Written in pieces of 16 rows: from_dict over Python lists of every sample reached 21 GB at 7 h;
    # datasets turns each piece into Python floats (~32 B a sample), so the piece bounds the memory.
    ds = datasets.Dataset.from_generator(
        rows, features=features, cache_dir=str(arrow_dir.parent / "arrow-cache"), writer_batch_size=16
    )
    ds.save_to_disk(str(arrow_dir))
    t2 = time.perf_counter()
    size = sum(f.stat().st_size for f in arrow_dir.rglob("*") if f.is_file())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the first thing main does
    return {
        "encode_labels_s": t1 - t0,
        "read_store_generate_save_s": t2 - t1,
        "arrow_bytes": size,
        "peak_rss_mb": peak_mb,
    }


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    import featstore
    from featstore.sampler import for_store

    torch.set_num_threads(1)
    store = featstore.open_store(args.store)
    durations = np.asarray(store.durations)
    sampler = for_store(store, max_batch_seconds=args.seconds, seed=0)
    n_batches = len(sampler)
    processor = processor_for(store, Path(args.work) / "processor")
    extra: dict[str, Any] = {}
    rss_before = tree_rss()
    # "PATH-wN": PATH with N DataLoader workers (default 1)
    path, _, workers = args.child.partition("-w")
    workers_count = int(workers) if workers else 1
    if path == "ours" or path.removeprefix("ours-") in AUGMENTED:
        from trainer.config import TextOptions
        from trainer.data import StoreDataset, make_loader, model_inputs

        t_dataset = time.perf_counter()
        augmenter = None
        if path != "ours":  # "ours-augmented", "ours-speed-w2", ...
            from trainer.augment import Augmenter, AugmentOptions
            from trainer.config import BatchOptions
            from trainer.data import training_sampler

            chosen = AUGMENTED[path.removeprefix("ours-")]
            options = AugmentOptions(**{"noise_store": args.noise_store or args.store, **chosen})
            augmenter = Augmenter(options, seed=0, count=len(store), sample_rate=store.sample_rate)
            indices = np.arange(len(store))
            batch_options = BatchOptions(max_batch_seconds=args.seconds, batch_size=None)
            sampler = training_sampler(store, batch_options, indices, augmenter, seed=0)
            n_batches = len(sampler)
        dataset = StoreDataset(args.store, processor, TextOptions(), augmenter=augmenter)
        extra["dataset_init_s"] = time.perf_counter() - t_dataset  # opens the store, encodes every label
        loader = make_loader(dataset, sampler, workers=workers_count)
        extra["batches_per_epoch"] = n_batches

        def ready(batch: Any) -> tuple[dict[str, Any], int]:
            return model_inputs(batch, "cpu"), int(batch.lengths.sum())  # the mask is made from these lengths
    elif path == "lhotse":
        from lhotse_path import make_lhotse_loader
        from lhotse_path import model_inputs as lhotse_inputs

        from trainer.config import TextOptions
        from trainer.vocab import encode_labels

        text = TextOptions()
        labels_by_text = {t: list(encode_labels(processor, text.normalize(t))) for t in set(store.texts)}
        loader = make_lhotse_loader(Path(args.work) / "shar", args.seconds, workers_count)

        def ready(batch: Any) -> tuple[dict[str, Any], int]:
            return lhotse_inputs(batch, labels_by_text)
    else:
        import datasets
        from transformers.trainer_pt_utils import LengthGroupedSampler

        ds = datasets.load_from_disk(str(Path(args.work) / "arrow"))
        batch_size = max(1, round(len(store) / n_batches))
        lengths = [int(round(d * SR)) for d in durations]
        if args.infer_lengths:
            t0 = time.perf_counter()
            inferred = [len(row["input_values"]) for row in ds]
            extra["trainer_infer_lengths_s"] = time.perf_counter() - t0
            extra["inferred_lengths_match_durations"] = inferred == lengths
        lg = LengthGroupedSampler(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(0))
        loader = DataLoader(
            ds,
            batch_size=batch_size,
            sampler=lg,
            collate_fn=DataCollatorCTCWithPadding(processor),
            num_workers=workers_count,
        )
        extra["batch_size"] = batch_size
        extra["batches_per_epoch"] = (len(store) + batch_size - 1) // batch_size

        def ready(batch: Any) -> tuple[dict[str, Any], int]:
            # the collator already gives float32 audio, an int64 mask and labels
            return batch, int(batch["attention_mask"].sum())

    model = opt = None
    if args.train:
        from trainer.model import build_tiny_random

        model = build_tiny_random(len(processor.tokenizer), processor.tokenizer.pad_token_id, seed=0)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    audio_s = 0.0
    padded_samples = 0
    batches = 0
    rss_per_batch: list[int] = []
    wait: list[float] = []
    step: list[float] = []
    with Monitor() as mon:
        cpu_main, cpu_workers = cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        last = t0
        for delivered in loader:
            batch, samples = ready(delivered)
            now = time.perf_counter()
            wait.append(now - last)
            batches += 1
            audio_s += samples / SR
            padded_samples += batch["input_values"].numel()
            rss_per_batch.append(mon.latest)
            if model is not None and batches <= args.train:
                s0 = time.perf_counter()
                out = model(
                    input_values=batch["input_values"], attention_mask=batch["attention_mask"], labels=batch["labels"]
                )
                out.loss.backward()
                opt.step()
                opt.zero_grad()
                step.append(time.perf_counter() - s0)
                if batches == args.train:
                    # the rest of the epoch measures the loader alone
                    t_train_end = time.perf_counter()
                    audio_after_train = audio_s
                    batches_after_train = batches
            last = time.perf_counter()
        wall = time.perf_counter() - t0
        # An exhausted loader has joined its worker, so RUSAGE_CHILDREN now holds the worker's CPU time.
        cpu_main = cpu_seconds(resource.RUSAGE_SELF) - cpu_main
        cpu_workers = cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_workers
    q = max(1, len(rss_per_batch) // 4)
    result = {
        "path": args.child,
        "batches": batches,
        "audio_s": audio_s,
        "wall_s": wall,
        "audio_s_per_s": audio_s / wall,
        "padding_fraction": 1 - audio_s * SR / padded_samples,
        "workers": workers_count,
        "loader_s_per_batch": wall / batches,
        "cpu_main_s": cpu_main,  # includes the RSS monitor thread
        "cpu_workers_s": cpu_workers,
        "audio_s_per_cpu_s": audio_s / (cpu_main + cpu_workers),
        "rss_before_loader_mb": rss_before / 2**20,
        "peak_tree_rss_mb": mon.peak / 2**20,
        "rss_first_quarter_max_mb": max(rss_per_batch[:q]) / 2**20,
        "rss_last_quarter_max_mb": max(rss_per_batch[-q:]) / 2**20,
        "torch_threads": torch.get_num_threads(),
        **extra,
    }
    if model is not None and step:
        # loader-only throughput over the batches after training (epoch otherwise includes steps)
        rest_wall = wall - (t_train_end - t0)
        result.update(
            {
                "train_steps": len(step),
                "train_step_s_mean": float(np.mean(step)),
                "train_step_s_median": float(np.median(step)),
                "train_wait_for_data_s_mean": float(np.mean(wait[1 : len(step)])) if len(step) > 1 else None,
                "first_batch_s": wait[0],
                "loader_only_audio_s_per_s": (audio_s - audio_after_train) / rest_wall
                if batches > batches_after_train
                else None,
            }
        )
    return result


def augmented_ratios(throughput: dict[str, list[float]]) -> dict[str, list[float]]:
    """Each augmented path's throughput over plain `ours`'s with as many workers, per repetition."""
    ratios = {}
    for path, values in throughput.items():
        name, dash_w, workers = path.partition("-w")
        plain = f"ours{dash_w}{workers}"
        if name.removeprefix("ours-") in AUGMENTED and plain in throughput:
            ratios[path] = [a / o for a, o in zip(values, throughput[plain], strict=False)]
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--seconds", type=float, default=100)
    parser.add_argument("--work", default="/tmp/trainer-loader-bench")
    parser.add_argument("--train", type=int, default=0)
    parser.add_argument("--infer-lengths", action="store_true")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--paths", nargs="+", default=["ours", "notebook"])
    parser.add_argument("--repeat", type=int, default=1, help="run the paths this many times, interleaved")
    parser.add_argument("--noise-store", help="noise for ours-augmented (default: the store itself)")
    parser.add_argument("--json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prep: dict[str, Any] = {}
    if any(p.startswith("notebook") for p in args.paths) and (
        args.rebuild or not (work / "arrow" / "dataset_info.json").exists()
    ):
        prep = build_arrow(args.store, work / "arrow", work / "processor")
        print("arrow prep", json.dumps(prep), flush=True)
    if any(p.startswith("lhotse") for p in args.paths) and (args.rebuild or not (work / "shar").exists()):
        from lhotse_path import build_shar

        prep["shar"] = build_shar(args.store, work / "shar")
        print("shar prep", json.dumps(prep["shar"]), flush=True)
    results = []
    for path in [path for _ in range(args.repeat) for path in args.paths]:
        command = [
            sys.executable,
            __file__,
            args.store,
            "--seconds",
            str(args.seconds),
            "--work",
            str(work),
            "--train",
            str(args.train),
            "--child",
            path,
            *(["--noise-store", args.noise_store] if args.noise_store else []),
        ]
        if args.infer_lengths:
            command.append("--infer-lengths")
        load = os.getloadavg()[0]
        out = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{path} failed")
        result = json.loads(lines[-1][7:])
        result["loadavg_before"] = load
        results.append(result)
        print(json.dumps(result), flush=True)
    throughput = {path: [r["audio_s_per_s"] for r in results if r["path"] == path] for path in args.paths}
    summary: dict[str, Any] = {
        "store": args.store,
        "max_batch_seconds": args.seconds,
        "arrow_prep": prep,
        "results": results,
        "median_audio_s_per_s": {path: statistics.median(values) for path, values in throughput.items()},
    }
    if "ours" in throughput and "notebook" in throughput:
        # Each repetition's ratio (its runs were minutes apart at most), and the ratio of medians.
        summary["speedups"] = [o / n for o, n in zip(throughput["ours"], throughput["notebook"], strict=False)]
        summary["speedup"] = statistics.median(throughput["ours"]) / statistics.median(throughput["notebook"])
        ratios = ", ".join(f"{r:.1f}x" for r in summary["speedups"])
        print(f"speedup ours/notebook: {summary['speedup']:.1f}x (medians; per repetition {ratios})", flush=True)
    summary["augmented_ratios"] = augmented_ratios(throughput)
    for path, ratios in summary["augmented_ratios"].items():
        print(f"{path} / plain throughput: {', '.join(f'{r:.2f}' for r in ratios)} (per repetition)", flush=True)
    if args.json:
        save_json(summary, args.json)


if __name__ == "__main__":
    main()
