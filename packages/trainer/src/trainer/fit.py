"""The training loop, read top to bottom: `fit` names each stage, and each stage is one function.

`fit(config, out)` builds the vocabulary and processor, the model (LoRA or full), the data
path (lazy Dataset -> featstore's length-grouped sampler -> collator), the optimiser (AdamW with
linear warm-up then linear decay, or a constant rate) and, with `resume=True`, restores the
newest readable checkpoint. Then it trains with gradient accumulation and clipping, mixed
precision on CUDA, and evaluates and checkpoints every `eval_steps`. Under `torchrun`
(WORLD_SIZE > 1) it joins the process group from the environment, wraps the model in DDP, gives
each rank its share of every epoch's batches, and lets only rank 0 write.

A checkpoint is a plain dict: trainable weights, optimiser, scheduler, grad scaler, progress
(step, evaluations), the sampler's state (epoch, batches trained on, seed) and the RNG states,
so a resumed run continues exactly where the last completed optimiser step left off.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import random
import shutil
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import PreTrainedModel, Wav2Vec2Processor, get_scheduler

from featstore import FeatStore
from featstore.sampler import DurationBucketSampler
from trainer.augment import Augmenter, masking_config
from trainer.claims import check_run_deletable
from trainer.config import TINY_RANDOM, RunConfig
from trainer.data import Batch, Item, StoreDataset, make_loader, model_inputs, training_sampler
from trainer.errors import TrainerError
from trainer.inference import pick_device, score, transcribe_batches
from trainer.metrics import append_metrics, plot_metrics, read_metrics, truncate_metrics
from trainer.model import build_tiny_random, count_parameters, load_base, prepare, trainable_state
from trainer.run import (
    RunDir,
    check_run_ours,
    claim_run_dir,
    load_base_for_run,
    read_run,
    run_config,
    write_run_file,
)
from trainer.stores import check_scorable, open_checked
from trainer.vocab import PAD, build_processor, build_vocab, load_processor

Echo = Callable[[str], None]


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
    """Optimiser steps done and the evaluations so far (where in the data: the sampler's state)."""

    step: int = 0
    evaluations: list[dict[str, float]] = field(default_factory=list)  # {"step", "wer", "cer"}


@dataclass(frozen=True)
class Data:
    """The training batches (the sampler knows the epoch and what was trained) and the eval batches."""

    dataset: StoreDataset  # knows the epoch whose augmentation its items get
    sampler: DurationBucketSampler
    loader: DataLoader[Item]
    eval_loader: DataLoader[Item] | None


@dataclass(frozen=True)
class Optimisation:
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LambdaLR from transformers.get_scheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None  # autocast dtype; None trains in full precision


@dataclass
class Training:
    """Everything the loop touches, built once by `fit`."""

    config: RunConfig
    run: RunDir
    dist: Distributed
    device: torch.device
    model: torch.nn.Module  # what is saved (a PeftModel for LoRA)
    trained: torch.nn.Module  # what runs forward: the model, or DDP around it
    processor: Wav2Vec2Processor
    data: Data
    optimisation: Optimisation
    total_steps: int
    progress: Progress
    parameters: tuple[int, int]  # (trainable, total)
    echo: Echo
    started: float
    losses: list[float] = field(default_factory=list)  # since the last logged step
    loss_finite: bool = True  # the last logged loss was a number (a warning marks the change)
    # (step, RNG states) as that step finished: what a checkpoint taken on Ctrl-C must hold, since
    # the interrupted step's forward passes have drawn dropout masks from the generators since.
    step_rng: tuple[int, dict[str, Any]] | None = None


@dataclass(frozen=True)
class FitResult:
    model: torch.nn.Module  # the final weights, unwrapped from DDP (a PeftModel for LoRA)
    run_dir: Path
    steps: int  # the run's steps in all
    final_step: int  # the checkpoint whose weights became the final model
    best: dict[str, float] | None
    trainable_parameters: int
    total_parameters: int
    seconds: float
    main_process: bool  # rank 0 (or the only process): the one that reports
    first_step: int = 0  # where this call started: the step a resumed run continued from


def fit(
    config: RunConfig,
    out: Path,
    resume: bool = False,
    overwrite: bool = False,
    echo: Echo = tqdm.write,
    on_step: Callable[[int], None] | None = None,
    inputs: Iterable[Path] = (),
    overrides: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train (or with `resume`, continue) the run in `out`; `on_step(step)` runs after each step.

    A new run records its local inputs as absolute paths, and `out` may not be, hold or lie in
    any of them (nor in `inputs`, further files it was made from, such as an exclusion list).
    A resumed run takes its saved settings, with `overrides` (`device`, `workers`) replacing them.
    On KeyboardInterrupt the last completed step is checkpointed before the exception goes on.
    """
    started = time.monotonic()
    d = init_distributed()
    out = Path(os.path.abspath(out))  # "." names the directory it is
    if not resume:
        config = config.with_absolute_paths()
    claim_run_dir(out, resume, overwrite, [*config.input_paths(), *inputs])
    run = RunDir(out)
    if resume:
        config = replace(run_config(read_run(out)[1]), **(overrides or {}))
    pick_device(config.device, d.local_rank)  # a device this machine lacks fails before any work
    setup = run if resume else RunDir(staging_path(out))
    try:
        seed_everything(config.seed)
        train_store = open_checked(config.store, need_text=True)
        eval_store = open_checked(config.eval_store, need_text=True) if config.eval_store else None
        check_data_options(config, train_store, eval_store, d.world_size)
        processor, base = build_processor_and_base(config, setup, d, train_store, eval_store, resume)
        if config.base_model == TINY_RANDOM:  # the adapter names its base by path: the one it will have
            base.name_or_path = base.config.name_or_path = str(run.base)
        model, device = build_model(base, config, d)
        trainable, total = count_parameters(model)
        if d.is_main:
            echo(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%) on {device}")
        data = build_data(config, processor, d, train_store, eval_store)
        total_steps = planned_steps(data.sampler, config)
        optimisation = build_optimisation(model, config, total_steps, device)
        progress = resume_from_checkpoint(run, model, optimisation, data.sampler, d, echo) if resume else Progress()
        if not resume:
            move_into_place(setup.path, out, d)
    except KeyboardInterrupt:
        discard_setup(setup, run, d)
        raise SetupInterrupted from None
    except BaseException:
        discard_setup(setup, run, d)
        raise
    trained = wrap_distributed(model, config, device, d)
    training = Training(
        config,
        run,
        d,
        device,
        model,
        trained,
        processor,
        data,
        optimisation,
        total_steps,
        progress,
        (trainable, total),
        echo,
        started,
    )
    first_step = progress.step
    train(training, on_step)
    final_step = finish(training)
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
        first_step,
    )


class SetupInterrupted(KeyboardInterrupt):
    """Ctrl-C before training started: the run directory is as it was."""


def staging_path(out: Path) -> Path:
    """Where a new run is set up before it replaces `out`: beside it, the same name on every rank."""
    return out.with_name(f"{out.name}.{hashlib.sha1(str(out).encode()).hexdigest()[:8]}.partial")


def move_into_place(staging: Path, out: Path, d: Distributed) -> None:
    """The set-up run becomes `out`, replacing what was there only once everything was built.

    The old run is checked again first: files may have been added since `claim_run_dir`.
    """
    d.barrier()  # every rank has read the setup
    if d.is_main:
        if out.is_dir() and any(out.iterdir()):
            check_run_ours(out)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    d.barrier()


def discard_setup(setup: RunDir, run: RunDir, d: Distributed) -> None:
    """A new run's setup that failed or was interrupted is removed; `out` was never touched."""
    if setup is not run and d.is_main and setup.path.exists():
        shutil.rmtree(setup.path)


def build_processor_and_base(
    config: RunConfig,
    run: RunDir,
    d: Distributed,
    train_store: FeatStore,
    eval_store: FeatStore | None,
    resume: bool,
) -> tuple[Wav2Vec2Processor, PreTrainedModel]:
    """A new run: vocabulary from the text, processor and (tiny-random) base written to `run` (the
    staging directory, so nothing replaces an old run before the whole setup has succeeded).

    A resumed run reads back what it wrote.
    """
    base = None
    if not resume:
        texts = train_store.texts + (eval_store.texts if eval_store is not None else [])
        vocab = build_vocab(config.text.normalize(t) for t in texts)
        if config.base_model != TINY_RANDOM:
            base = load_base(config.base_model, vocab, **masking_config(config.augment))
        if d.is_main:
            if run.path.exists():  # a setup killed before it could clean up
                check_run_deletable(run.path)
                shutil.rmtree(run.path)
            run.path.mkdir(parents=True)
            build_processor(vocab, run.processor).save_pretrained(str(run.processor))
            if config.base_model == TINY_RANDOM:
                tiny = build_tiny_random(len(vocab), vocab[PAD], config.seed, **masking_config(config.augment))
                tiny.save_pretrained(str(run.base))
            write_run_file(run, config, status="training")
        d.barrier()
    processor = load_processor(run.processor)
    if base is None:
        base = load_base_for_run(run, config, processor)
    return processor, base


def build_model(base: PreTrainedModel, config: RunConfig, d: Distributed) -> tuple[torch.nn.Module, torch.device]:
    """The model that trains (LoRA-wrapped or the base itself), on this process's device."""
    model = prepare(base, config.finetune)
    if config.gradient_checkpointing:
        # Non-reentrant: with a frozen feature encoder the encoder input needs no grad, and the
        # reentrant variant would then give the adapter no gradient at all.
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    device = pick_device(config.device, d.local_rank)
    model.to(device)
    return model, device


def check_data_options(config: RunConfig, train_store: FeatStore, eval_store: FeatStore | None, ranks: int) -> None:
    """Fail on the exclusion, the noise store, an eval store that cannot be scored, or more
    processes than utterances, before anything is written to the run directory."""
    kept = len(train_store) - len(config.exclusion.indices)
    if kept <= 0:
        raise TrainerError(f"{config.store}: every utterance is excluded; nothing is left to train on")
    if kept < ranks:
        raise TrainerError(f"{config.store}: {kept} utterances cannot give each of {ranks} processes a batch")
    if eval_store is not None:
        check_scorable(config.eval_store or "", [config.text.normalize(t) for t in eval_store.texts])
    if config.augment.noise_store is not None:
        open_checked(config.augment.noise_store)


def build_data(
    config: RunConfig,
    processor: Wav2Vec2Processor,
    d: Distributed,
    train_store: FeatStore,
    eval_store: FeatStore | None,
) -> Data:
    """This rank's length-grouped training batches; eval batches on the main process only."""
    indices = config.exclusion.kept(len(train_store))
    augmenter = build_augmenter(config, train_store)
    dataset = StoreDataset(config.store, processor, config.text, indices, augmenter)
    sampler = training_sampler(
        train_store,
        config.batch,
        indices,
        augmenter,
        seed=config.seed,
        shuffle=True,
        rank=d.rank,
        world_size=d.world_size,
    )
    eval_loader = None
    if config.eval_store and eval_store is not None and d.is_main:
        eval_dataset = StoreDataset(config.eval_store, processor, config.text)
        eval_loader = make_loader(eval_dataset, config.batch.sampler(eval_store, shuffle=False), config.workers)
    return Data(dataset, sampler, make_loader(dataset, sampler, config.workers), eval_loader)


def build_augmenter(config: RunConfig, train_store: FeatStore) -> Augmenter | None:
    """What the DataLoader workers do to training audio, or None when they leave it as stored."""
    if not config.augment.changes_audio:
        return None
    return Augmenter(config.augment, config.seed, len(train_store), train_store.sample_rate)


def build_optimisation(
    model: torch.nn.Module, config: RunConfig, total_steps: int, device: torch.device
) -> Optimisation:
    """AdamW over the trainable weights, warm-up then the schedule, and the mixed-precision scaler."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = {"linear": "linear", "constant": "constant_with_warmup"}[config.schedule]
    scheduler = get_scheduler(
        schedule, optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps), num_training_steps=total_steps
    )
    amp_dtype = autocast_dtype(device, config.mixed_precision)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return Optimisation(params, optimizer, scheduler, scaler, amp_dtype)


def resume_from_checkpoint(
    run: RunDir,
    model: torch.nn.Module,
    optimisation: Optimisation,
    sampler: DurationBucketSampler,
    d: Distributed,
    echo: Echo,
) -> Progress:
    """Restore the newest checkpoint that reads back whole; say which, and what was skipped.

    A checkpoint cut short (a full disk, a killed copy) is passed over for the one before it;
    with none readable the run starts again from step 0, and says so.
    """
    for step in reversed(run.checkpoint_steps()):
        try:
            state = read_checkpoint(run.checkpoint(step), model)
        except UnreadableCheckpoint as error:
            if d.is_main:
                echo(f"warning: {error}; trying the checkpoint before it")
            continue
        progress = apply_checkpoint(state, model, optimisation, sampler)
        if d.is_main:
            truncate_metrics(run.metrics, progress.step)
            echo(f"resuming at step {progress.step} (epoch {sampler.epoch}, batch {sampler.batches_trained})")
        return progress
    if d.is_main:
        truncate_metrics(run.metrics, 0)
        echo(f"no readable checkpoint in {run.path}; starting from step 0")
    return Progress()


def wrap_distributed(
    model: torch.nn.Module, config: RunConfig, device: torch.device, d: Distributed
) -> torch.nn.Module:
    if d.world_size == 1:
        return model
    # Full fine-tuning leaves masked_spec_embed unused when masking is off.
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=config.finetune.method == "full",
    )


def train(t: Training, on_step: Callable[[int], None] | None) -> None:
    """Epoch after epoch until the planned steps; on Ctrl-C keep the last completed step."""
    bar = tqdm(total=t.total_steps, initial=t.progress.step, desc="fit", disable=None if t.dist.is_main else True)
    t.trained.train()
    try:
        while t.progress.step < t.total_steps:
            train_epoch(t, bar, on_step)
    except KeyboardInterrupt:
        if t.dist.is_main and t.progress.step and t.progress.step not in t.run.checkpoint_steps():
            rng = t.step_rng[1] if t.step_rng is not None and t.step_rng[0] == t.progress.step else None
            save_checkpoint(t, rng)
        raise
    finally:
        bar.close()


def train_epoch(t: Training, bar: tqdm[Any], on_step: Callable[[int], None] | None) -> None:
    """The rest of the sampler's epoch, one optimiser step per `grad_accum` batches.

    The epoch's last batches make a step even when fewer. Batches count as trained once their
    step is taken, so a checkpoint never skips a batch whose gradient was thrown away.
    """
    sampler = t.data.sampler
    epoch_batches, micro = len(sampler), 0
    t.data.dataset.set_epoch(sampler.epoch)  # before the loader starts its workers with a copy
    for batch in t.data.loader:
        micro += 1
        boundary = micro == t.config.grad_accum or sampler.batches_trained + micro == epoch_batches
        t.losses.append(forward_backward(t, batch, sync=boundary))
        if not boundary:
            continue
        optimiser_step(t.optimisation, t.config.max_grad_norm)
        sampler.mark_trained(micro)
        micro = 0
        t.progress.step += 1
        bar.update(1)
        after_step(t, bar)
        if on_step is not None:
            on_step(t.progress.step)
        t.step_rng = (t.progress.step, rng_states())
        if t.progress.step >= t.total_steps:
            return
    sampler.set_epoch(sampler.epoch + 1)


def forward_backward(t: Training, batch: Batch, sync: bool) -> float:
    """Loss and gradients of one batch; under DDP, gradients are all-reduced only when `sync`."""
    no_sync = not sync and t.dist.world_size > 1
    context = t.trained.no_sync() if no_sync else nullcontext()  # type: ignore[operator]
    inputs = model_inputs(batch, t.device)
    with context, autocast(t.device, t.optimisation.amp_dtype):
        loss = t.trained(**inputs).loss
        t.optimisation.scaler.scale(loss / t.config.grad_accum).backward()
    return float(loss.detach())


def optimiser_step(o: Optimisation, max_grad_norm: float) -> None:
    o.scaler.unscale_(o.optimizer)
    torch.nn.utils.clip_grad_norm_(o.params, max_grad_norm)
    o.scaler.step(o.optimizer)
    o.scaler.update()
    o.optimizer.zero_grad(set_to_none=True)
    o.scheduler.step()


def after_step(t: Training, bar: tqdm[Any]) -> None:
    """Log every `logging_steps`; evaluate and checkpoint every `eval_steps` and at the end."""
    step = t.progress.step
    if step % t.config.logging_steps == 0 and t.dist.is_main:
        loss = float(np.mean(t.losses))
        record = {
            "step": step,
            "epoch": t.data.sampler.epoch,
            "loss": loss,
            "learning_rate": t.optimisation.scheduler.get_last_lr()[0],
            "seconds": round(time.monotonic() - t.started, 2),
        }
        append_metrics(t.run.metrics, record)
        bar.set_postfix(loss=f"{loss:.3f}")
        t.losses = []
        if t.loss_finite and not math.isfinite(loss):
            t.echo(f"warning: the training loss is {loss} at step {step}: training diverged; lower --lr")
        t.loss_finite = math.isfinite(loss)
    if step % t.config.eval_steps == 0 or step == t.total_steps:
        evaluate_and_checkpoint(t)


def evaluate_and_checkpoint(t: Training) -> None:
    """On the main process: score the eval store, save a checkpoint, prune the others."""
    if t.dist.is_main:
        if t.data.eval_loader is not None:
            scores = score(transcribe_batches(t.model, t.data.eval_loader, t.processor, t.device))
            t.progress.evaluations.append({"step": t.progress.step, "wer": scores.wer, "cer": scores.cer})
            record = {"step": t.progress.step, "eval_wer": scores.wer, "eval_cer": scores.cer}
            append_metrics(t.run.metrics, {**record, "epoch": t.data.sampler.epoch})
            t.echo(f"step {t.progress.step}: eval WER {scores.wer:.4f}  CER {scores.cer:.4f}")
        save_checkpoint(t)
        prune_checkpoints(t.run, t.progress, t.config.keep_best)
    t.dist.barrier()


def finish(t: Training) -> int:
    """Load the best evaluated weights, save the adapter (or model), mark the run finished."""
    final_step = choose_final(t.progress)
    if t.dist.is_main:
        if final_step != t.progress.step:
            state = torch.load(t.run.checkpoint(final_step) / "state.pt", map_location=t.device, weights_only=False)
            t.model.load_state_dict(state["model"], strict=False)
        if t.config.finetune.method == "lora":
            # peft takes a head sized for another vocabulary than the base's for resized input
            # embeddings, which wav2vec2 does not have; the head is saved as a module_to_save.
            t.model.save_pretrained(str(t.run.adapter), save_embedding_layers=False)  # type: ignore[operator]
        else:
            t.model.save_pretrained(str(t.run.model))  # type: ignore[operator]
            t.processor.save_pretrained(str(t.run.model))
        trainable, total = t.parameters
        write_run_file(
            t.run,
            t.config,
            status="finished",
            steps=t.progress.step,
            final_step=final_step,
            best=best_evaluation(t.progress),
            trainable_parameters={"trainable": trainable, "total": total, "fraction": trainable / total},
        )
        plot_metrics(read_metrics(t.run.metrics), t.run.plot)
    t.dist.barrier()
    return final_step


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


class UnreadableCheckpoint(Exception):
    """A checkpoint that does not read back whole (cut short, or from another model)."""


def rng_states() -> dict[str, Any]:
    """Every generator training draws from (dropout, masking), to restore on resume."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def save_checkpoint(t: Training, rng: dict[str, Any] | None = None) -> None:
    """Write the checkpoint of the current step atomically: built in a sibling directory, then renamed.

    `rng`: the generators' states as the step finished, when they have moved on since (Ctrl-C).
    """
    o = t.optimisation
    state = {
        "progress": asdict(t.progress),
        "sampler": t.data.sampler.state_dict(),
        "model": trainable_state(t.model),
        "optimizer": o.optimizer.state_dict(),
        "scheduler": o.scheduler.state_dict(),
        "scaler": o.scaler.state_dict(),
        "rng": rng if rng is not None else rng_states(),
    }
    path = t.run.checkpoint(t.progress.step)
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.partial")
    partial.mkdir(parents=True)
    torch.save(state, partial / "state.pt")
    if path.exists():
        shutil.rmtree(path)
    partial.rename(path)


CHECKPOINT_KEYS = {"progress", "sampler", "model", "optimizer", "scheduler", "scaler", "rng"}


def read_checkpoint(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """The state `save_checkpoint` wrote, checked whole before anything is restored from it."""
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnreadableCheckpoint(f"{path} is unreadable ({reason})") from None
    if not isinstance(state, dict) or not set(state) >= CHECKPOINT_KEYS:
        raise UnreadableCheckpoint(f"{path} is not a checkpoint this trainer wrote")
    upgrade_checkpoint(state)
    missing = set(trainable_state(model)) - set(state["model"])
    if missing:
        raise TrainerError(f"{path}: checkpoint lacks {len(missing)} trainable tensors; it belongs to another model")
    return state


def upgrade_checkpoint(state: dict[str, Any]) -> None:
    """Read a checkpoint of an earlier trainer, whose progress held the epoch and batches consumed.

    Its sampler entry `{"epoch", "yielded", "seed"}` counted the batches trained on already.
    """
    sampler = state["sampler"]
    if "yielded" in sampler:
        state["sampler"] = {"epoch": sampler["epoch"], "batches_trained": sampler["yielded"], "seed": sampler["seed"]}
    state["progress"] = {key: state["progress"][key] for key in ("step", "evaluations")}


def apply_checkpoint(
    state: dict[str, Any], model: torch.nn.Module, o: Optimisation, sampler: DurationBucketSampler
) -> Progress:
    """Restore everything `save_checkpoint` wrote; return the progress to continue from."""
    model.load_state_dict(state["model"], strict=False)
    o.optimizer.load_state_dict(state["optimizer"])
    o.scheduler.load_state_dict(state["scheduler"])
    o.scaler.load_state_dict(state["scaler"])
    sampler.load_state_dict(state["sampler"])
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
