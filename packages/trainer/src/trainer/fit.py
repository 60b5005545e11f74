"""The training loop: one function, read top to bottom.

`fit(config, out)` builds the vocabulary and processor, the model (LoRA or full), the data
path (lazy Dataset -> featstore's length-grouped sampler -> collator), then runs AdamW with
linear warm-up then linear decay (or a constant rate), gradient accumulation and clipping,
mixed precision on CUDA, and evaluates and checkpoints every `eval_steps`. Under `torchrun`
(WORLD_SIZE > 1) it joins the process group from the environment, wraps the model in DDP, gives
each rank its share of every epoch's batches, and lets only rank 0 write.

A checkpoint is a plain dict: trainable weights, optimizer, scheduler, grad scaler, progress
(step, epoch, batches of the epoch consumed), the sampler state and the RNG states, so
`resume=True` continues exactly where the last completed optimizer step left off.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from transformers import get_scheduler

from featstore.sampler import DurationBucketSampler
from trainer.config import TINY_RANDOM, RunConfig
from trainer.data import StoreDataset, make_loader, model_inputs
from trainer.errors import TrainerError
from trainer.inference import pick_device, score, transcribe_batches
from trainer.metrics import append_metrics, plot_metrics, read_metrics, truncate_metrics
from trainer.model import build_tiny_random, count_parameters, load_base, prepare, trainable_state
from trainer.run import (
    RunDir,
    claim_run_dir,
    load_base_for_run,
    read_run,
    reset_run_dir,
    run_config,
    write_run_file,
)
from trainer.stores import open_checked
from trainer.vocab import PAD, build_processor, build_vocab, load_processor


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def init_distributed() -> Distributed:
    """Join the process group that torchrun / accelerate launch describe in the environment."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Distributed(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))


@dataclass
class Progress:
    """Where training stands; with the sampler's seed it fixes the next batch exactly."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0  # batches of this epoch consumed by completed optimizer steps
    evaluations: list[dict[str, float]] = field(default_factory=list)  # {"step", "wer", "cer"}


@dataclass(frozen=True)
class FitResult:
    model: torch.nn.Module  # the final weights, unwrapped from DDP (a PeftModel for LoRA)
    run_dir: Path
    steps: int
    final_step: int  # the checkpoint whose weights became the final model
    best: dict[str, float] | None
    trainable_parameters: int
    total_parameters: int
    seconds: float
    main_process: bool  # rank 0 (or the only process): the one that reports


def fit(
    config: RunConfig,
    out: Path,
    resume: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] = tqdm.write,
    on_step: Callable[[int], None] | None = None,
) -> FitResult:
    """Train (or with `resume`, continue) the run in `out`; `on_step(step)` runs after each step.

    On KeyboardInterrupt the last completed step is checkpointed before the exception goes on.
    """
    started = time.monotonic()
    d = init_distributed()
    claim_run_dir(out, resume, overwrite)
    run = RunDir(out)
    if resume:
        config = run_config(read_run(out)[1])
    seed_everything(config.seed)
    train_store = open_checked(config.store, need_text=True)
    eval_store = open_checked(config.eval_store, need_text=True) if config.eval_store else None

    base = None
    if not resume:
        texts = train_store.texts + (eval_store.texts if eval_store is not None else [])
        vocab = build_vocab(config.text.normalize(t) for t in texts)
        if config.base_model != TINY_RANDOM:
            base = load_base(config.base_model, len(vocab), vocab[PAD])  # fails before anything is written
        if d.is_main:
            reset_run_dir(out)
            build_processor(vocab, run.processor).save_pretrained(str(run.processor))
            if config.base_model == TINY_RANDOM:
                build_tiny_random(len(vocab), vocab[PAD], config.seed).save_pretrained(str(run.base))
            write_run_file(run, config, status="training")
        d.barrier()
    processor = load_processor(run.processor)
    if base is None:
        base = load_base_for_run(run, config, processor)
    model = prepare(base, config.finetune)
    if config.gradient_checkpointing:
        # Non-reentrant: with a frozen feature encoder the encoder input needs no grad, and the
        # reentrant variant would then give the adapter no gradient at all.
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    device = pick_device(config.device, d.local_rank)
    model.to(device)
    trainable, total = count_parameters(model)
    if d.is_main:
        echo(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%) on {device}")

    dataset = StoreDataset(config.store, processor, config.text)
    sampler = config.batch.sampler(train_store, seed=config.seed, shuffle=True, rank=d.rank, world_size=d.world_size)
    loader = make_loader(dataset, sampler, config.workers)
    eval_loader = None
    if config.eval_store and eval_store is not None and d.is_main:
        eval_dataset = StoreDataset(config.eval_store, processor, config.text)
        eval_loader = make_loader(eval_dataset, config.batch.sampler(eval_store, shuffle=False), config.workers)
    total_steps = planned_steps(sampler, config)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = {"linear": "linear", "constant": "constant_with_warmup"}[config.schedule]
    scheduler = get_scheduler(
        schedule, optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps), num_training_steps=total_steps
    )
    amp_dtype = autocast_dtype(device, config.mixed_precision)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    progress = Progress()
    if resume and run.checkpoint_steps():
        progress = load_checkpoint(run.checkpoint(run.checkpoint_steps()[-1]), model, optimizer, scheduler, scaler)
        if d.is_main:
            truncate_metrics(run.metrics, progress.step)
            echo(f"resuming at step {progress.step} (epoch {progress.epoch}, batch {progress.batches_done})")
    trained: torch.nn.Module = model
    if d.world_size > 1:
        # Full fine-tuning leaves masked_spec_embed unused when masking is off.
        trained = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.finetune.method == "full",
        )

    def checkpoint_and_evaluate() -> None:
        if d.is_main:
            record: dict[str, Any] = {"step": progress.step}
            if eval_loader is not None:
                scores = score(transcribe_batches(model, eval_loader, processor, device))
                progress.evaluations.append({"step": progress.step, "wer": scores.wer, "cer": scores.cer})
                record.update(eval_wer=scores.wer, eval_cer=scores.cer, epoch=progress.epoch)
                append_metrics(run.metrics, record)
                echo(f"step {progress.step}: eval WER {scores.wer:.4f}  CER {scores.cer:.4f}")
            save_checkpoint(run.checkpoint(progress.step), model, optimizer, scheduler, scaler, progress, config.seed)
            prune_checkpoints(run, progress, config.keep_best)
        d.barrier()

    bar = tqdm(total=total_steps, initial=progress.step, desc="fit", disable=None if d.is_main else True)
    losses: list[float] = []
    trained.train()
    try:
        while progress.step < total_steps:
            sampler.load_state_dict({"epoch": progress.epoch, "yielded": progress.batches_done, "seed": config.seed})
            epoch_batches, consumed, micro = len(sampler), progress.batches_done, 0
            for batch in loader:
                consumed += 1
                micro += 1
                boundary = micro == config.grad_accum or consumed == epoch_batches
                sync = nullcontext() if boundary or d.world_size == 1 else trained.no_sync()  # type: ignore[operator]
                inputs = model_inputs(batch, device)
                with sync, autocast(device, amp_dtype):
                    loss = trained(**inputs).loss
                    scaler.scale(loss / config.grad_accum).backward()
                losses.append(float(loss.detach()))
                if not boundary:
                    continue
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                progress.step, progress.batches_done, micro = progress.step + 1, consumed, 0
                bar.update(1)
                if progress.step % config.logging_steps == 0 and d.is_main:
                    append_metrics(
                        run.metrics,
                        {
                            "step": progress.step,
                            "epoch": progress.epoch,
                            "loss": float(np.mean(losses)),
                            "learning_rate": scheduler.get_last_lr()[0],
                            "seconds": round(time.monotonic() - started, 2),
                        },
                    )
                    bar.set_postfix(loss=f"{np.mean(losses):.3f}")
                    losses = []
                if progress.step % config.eval_steps == 0 or progress.step == total_steps:
                    checkpoint_and_evaluate()
                if on_step is not None:
                    on_step(progress.step)
                if progress.step >= total_steps:
                    break
            else:
                progress.epoch, progress.batches_done = progress.epoch + 1, 0
    except KeyboardInterrupt:
        if d.is_main and progress.step and progress.step not in run.checkpoint_steps():
            save_checkpoint(run.checkpoint(progress.step), model, optimizer, scheduler, scaler, progress, config.seed)
        raise
    finally:
        bar.close()

    final_step = choose_final(progress)
    if d.is_main:
        if final_step != progress.step:
            state = torch.load(run.checkpoint(final_step) / "state.pt", map_location=device, weights_only=False)
            model.load_state_dict(state["model"], strict=False)
        if config.finetune.method == "lora":
            model.save_pretrained(str(run.adapter))  # type: ignore[operator]
        else:
            model.save_pretrained(str(run.model))  # type: ignore[operator]
            processor.save_pretrained(str(run.model))
        best = best_evaluation(progress)
        write_run_file(run, config, status="finished", steps=progress.step, final_step=final_step, best=best)
        plot_metrics(read_metrics(run.metrics), run.plot)
    d.barrier()
    return FitResult(
        model,
        out,
        progress.step,
        final_step,
        best_evaluation(progress),
        trainable,
        total,
        time.monotonic() - started,
        d.is_main,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def planned_steps(sampler: DurationBucketSampler, config: RunConfig) -> int:
    """Optimizer steps of the whole run: --max-steps, or every epoch's batches / accumulation."""
    if config.max_steps is not None:
        return config.max_steps
    steps = 0
    for epoch in range(config.epochs):
        sampler.set_epoch(epoch)
        steps += math.ceil(len(sampler) / config.grad_accum)
    sampler.set_epoch(0)
    if steps == 0:
        raise TrainerError(f"{config.store}: no batches to train on; check the batch settings with trainer plan")
    return steps


def autocast_dtype(device: torch.device, mixed_precision: bool) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16; none on CPU and MPS (full precision there)."""
    if not mixed_precision or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    with torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext():
        yield


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    progress: Progress,
    seed: int,
) -> None:
    """Write `path/state.pt` atomically: built in a sibling directory, then renamed."""
    state = {
        "progress": asdict(progress),
        "sampler": {"epoch": progress.epoch, "yielded": progress.batches_done, "seed": seed},
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.partial")
    partial.mkdir(parents=True)
    torch.save(state, partial / "state.pt")
    if path.exists():
        shutil.rmtree(path)
    partial.rename(path)


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler
) -> Progress:
    """Restore everything `save_checkpoint` wrote; return the progress to continue from."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    missing = set(trainable_state(model)) - set(state["model"])
    if missing:
        raise TrainerError(f"{path}: checkpoint lacks {len(missing)} trainable tensors; it belongs to another model")
    model.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return Progress(**state["progress"])


def best_evaluation(progress: Progress) -> dict[str, float] | None:
    """Lowest WER, then CER; the later step wins a tie (it has trained longer)."""
    if not progress.evaluations:
        return None
    return min(progress.evaluations, key=lambda e: (e["wer"], e["cer"], -e["step"]))


def choose_final(progress: Progress) -> int:
    best = best_evaluation(progress)
    return int(best["step"]) if best is not None else progress.step


def prune_checkpoints(run: RunDir, progress: Progress, keep_best: int) -> None:
    """Keep the best `keep_best` by eval WER (the latest ones without eval) plus the latest."""
    steps = run.checkpoint_steps()
    if progress.evaluations:
        ranked = sorted(progress.evaluations, key=lambda e: (e["wer"], e["cer"], -e["step"]))
        keep = set([int(e["step"]) for e in ranked if int(e["step"]) in steps][:keep_best])
    else:
        keep = set(steps[-keep_best:])
    keep.add(progress.step)
    for step in steps:
        if step not in keep:
            shutil.rmtree(run.checkpoint(step))
