"""The `trainer` command: options in, library calls out. User errors are one line and exit 2."""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar, get_args

import click
from click.core import ParameterSource

from featstore import FeatstoreError
from featstore.commandline import OneLineErrors
from featstore.errors import describe_os_error
from featstore.storage import finite
from trainer.augment import AugmentOptions
from trainer.config import DEFAULT_BASE, BatchOptions, Device, FinetuneOptions, Method, RunConfig, Schedule, TextOptions
from trainer.errors import TrainerError
from trainer.exclude import Exclusion, resolve_exclusion

F = TypeVar("F", bound=Callable[..., Any])
DEFAULTS = RunConfig(store="")
PATH = click.Path(path_type=Path)
RESUME_OVERRIDES = ("device", "workers")  # how a resumed run executes, not what it trains
DEVICES = click.Choice(get_args(Device))


def user_errors(command: F) -> F:
    """Turn TrainerError / FeatstoreError, and OSError, into `error: ...` on stderr and exit 2, no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (TrainerError, FeatstoreError) as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except OSError as error:  # what the system refuses: a missing parent, no permission, a full disk
            click.echo(f"error: {describe_os_error(error)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


class Finite(click.FloatRange):
    """A float in a range that is also finite: nan passes every comparison with a bound."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


FINITE = Finite()
PROBABILITY = Finite(0, 1)
# Gain beyond +-40 dB (100x the amplitude either way) is no augmentation, and 10**(dB/20) overflows.
GAIN_DB = Finite(-40, 40)
SEED = click.IntRange(0, 2**32 - 1)  # what numpy's and torch's generators take
COUNT = click.IntRange(1, 2**31 - 1)  # steps, batches, sizes: larger ones overflow torch's integers


def batch_options(max_batch_seconds: float | None, batch_size: int) -> BatchOptions:
    """--max-batch-seconds, when given, replaces the fixed --batch-size."""
    if max_batch_seconds is not None:
        return BatchOptions(max_batch_seconds=max_batch_seconds, batch_size=None)
    return BatchOptions(batch_size=batch_size)


def batch_size_options(command: F) -> F:
    """--max-batch-seconds and --batch-size, shared by fit and plan so they size batches alike."""
    command = click.option(
        "--batch-size",
        type=COUNT,
        default=DEFAULTS.batch.batch_size,
        help="Utterances per batch per process (without --max-batch-seconds).",
    )(command)
    return click.option(
        "--max-batch-seconds",
        type=Finite(min=0, min_open=True),
        help="Fill batches up to this much padded audio (replaces --batch-size).",
    )(command)


def inference_options(command: F) -> F:
    """--device and --workers, shared by evaluate, transcribe and score, which read a store through a run."""
    command = click.option("--workers", type=click.IntRange(min=0), default=0, help="DataLoader worker processes.")(
        command
    )
    return click.option("--device", type=DEVICES, default="auto", help="auto picks cuda, then mps, then cpu.")(command)


def augment_options(command: F) -> F:
    """--augment-* and the SpecAugment masking options: what fit does to training audio."""
    options = [
        click.option(
            "--augment-speeds",
            default="",
            help="Comma-separated speed factors, one drawn per utterance and epoch, e.g. 0.9,1.0,1.1 "
            "(resampled with soxr; batches are cut by the changed durations). Empty: no speed change.",
        ),
        click.option(
            "--augment-noise-store", type=PATH, help="A featstore store (e.g. MUSAN ingested) whose clips are mixed in."
        ),
        click.option(
            "--augment-noise-prob",
            type=PROBABILITY,
            default=DEFAULTS.augment.noise_prob,
            help="Share of utterances that get noise.",
        ),
        click.option(
            "--augment-snr-db",
            type=(FINITE, FINITE),
            default=DEFAULTS.augment.snr_db,
            help="Noise SNR range in dB (MIN MAX), drawn per utterance.",
        ),
        click.option(
            "--augment-gain-db",
            type=(GAIN_DB, GAIN_DB),
            default=DEFAULTS.augment.gain_db,
            help="Gain range in dB (MIN MAX), drawn per utterance.",
        ),
        click.option(
            "--mask-time-prob",
            type=PROBABILITY,
            help="SpecAugment: share of time steps the model masks in training [default: the base model's].",
        ),
        click.option(
            "--mask-feature-prob",
            type=PROBABILITY,
            help="SpecAugment: share of feature channels the model masks in training [default: the base model's].",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def parse_augment(
    speeds: str,
    noise_store: Path | None,
    noise_prob: float,
    snr_db: tuple[float, float],
    gain_db: tuple[float, float],
    mask_time_prob: float | None,
    mask_feature_prob: float | None,
) -> AugmentOptions:
    try:
        factors = tuple(float(f) for f in speeds.split(",") if f.strip())
    except ValueError:
        raise TrainerError(f"--augment-speeds {speeds!r}: give numbers separated by commas, e.g. 0.9,1.0,1.1") from None
    if any(not 0.5 <= f <= 2.0 for f in factors):
        raise TrainerError(f"--augment-speeds {speeds!r}: each factor must be between 0.5 and 2")
    for name, (low, high) in (("--augment-snr-db", snr_db), ("--augment-gain-db", gain_db)):
        if low > high:
            raise TrainerError(f"{name} {low} {high}: the minimum is above the maximum")
    store = str(noise_store) if noise_store is not None else None
    return AugmentOptions(factors, store, noise_prob, snr_db, gain_db, mask_time_prob, mask_feature_prob)


def exclusion_options(command: F) -> F:
    """--exclude, or --exclude-cer-above with --scores: utterances fit leaves out."""
    command = click.option("--scores", type=PATH, help="A trainer score table of --store, for --exclude-cer-above.")(
        command
    )
    command = click.option(
        "--exclude-cer-above",
        type=Finite(min=0),
        help="Leave out utterances whose CER in --scores is above this.",
    )(command)
    return click.option(
        "--exclude",
        "exclude_list",
        type=PATH,
        help="File of store indices or audio_filepaths (one a line) to leave out of training.",
    )(command)


@click.group(cls=OneLineErrors, context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
def main() -> None:
    """Fine-tune wav2vec2-family models with LoRA (or fully) and CTC from a featstore store."""


@main.command("fit")
@click.option("--store", type=PATH, help="Training store (featstore). Not needed with --resume.")
@click.option(
    "--eval-store", type=PATH, help="Store evaluated every --eval-steps (WER/CER); picks the best checkpoint."
)
@click.option("--out", required=True, type=PATH, help="Run directory to create (or continue with --resume).")
@click.option("--base-model", default=DEFAULT_BASE, help="Hub id, local model directory, or tiny-random.")
@click.option(
    "--finetune", type=click.Choice(get_args(Method)), default="lora", help="Train a LoRA adapter or every weight."
)
@click.option("--lora-r", type=click.IntRange(1, 4096), default=DEFAULTS.finetune.lora_r, help="LoRA rank.")
@click.option("--lora-alpha", type=COUNT, default=DEFAULTS.finetune.lora_alpha)
@click.option("--lora-dropout", type=PROBABILITY, default=DEFAULTS.finetune.lora_dropout)
@click.option(
    "--lora-targets",
    default=",".join(DEFAULTS.finetune.target_modules),
    help="Comma-separated module names that get LoRA.",
)
@click.option(
    "--train-feature-encoder/--freeze-feature-encoder",
    default=False,
    help="With --finetune full: train the convolutional front end too.",
)
@click.option(
    "--strip-punctuation/--keep-punctuation",
    default=DEFAULTS.text.strip_punctuation,
    help="Drop punctuation from the text before building labels.",
)
@batch_size_options
@click.option("--grad-accum", type=COUNT, default=DEFAULTS.grad_accum, help="Batches per optimizer step.")
@click.option(
    "--lr",
    "learning_rate",
    type=Finite(min=0, min_open=True),
    default=DEFAULTS.learning_rate,
    help="Peak AdamW learning rate.",
)
@click.option("--weight-decay", type=Finite(min=0), default=DEFAULTS.weight_decay)
@click.option(
    "--warmup-ratio",
    type=PROBABILITY,
    default=DEFAULTS.warmup_ratio,
    help="Fraction of steps of linear warm-up (then linear decay).",
)
@click.option(
    "--schedule",
    type=click.Choice(get_args(Schedule)),
    default=DEFAULTS.schedule,
    help="After warm-up: linear decay to zero, or constant.",
)
@click.option(
    "--max-grad-norm", type=Finite(min=0, min_open=True), default=DEFAULTS.max_grad_norm, help="Gradient clipping norm."
)
@click.option("--epochs", type=COUNT, default=DEFAULTS.epochs)
@click.option("--max-steps", type=COUNT, help="Optimizer steps to train (replaces --epochs).")
@click.option(
    "--eval-steps",
    type=COUNT,
    default=DEFAULTS.eval_steps,
    help="Evaluate and checkpoint every N steps.",
)
@click.option("--logging-steps", type=COUNT, default=DEFAULTS.logging_steps)
@click.option(
    "--keep-best",
    type=COUNT,
    default=DEFAULTS.keep_best,
    help="Checkpoints kept (best by eval WER), plus the latest.",
)
@click.option("--seed", type=SEED, default=DEFAULTS.seed)
@click.option("--workers", type=click.IntRange(min=0), default=DEFAULTS.workers, help="DataLoader worker processes.")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=DEFAULTS.gradient_checkpointing)
@click.option(
    "--mixed-precision/--no-mixed-precision", default=DEFAULTS.mixed_precision, help="bf16 (or fp16) autocast on CUDA."
)
@click.option("--device", type=DEVICES, default=DEFAULTS.device, help="auto picks cuda, then mps, then cpu.")
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint, with its saved settings."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@augment_options
@exclusion_options
@user_errors
def fit_command(
    store: Path | None,
    eval_store: Path | None,
    out: Path,
    base_model: str,
    finetune: Method,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    lora_targets: str,
    train_feature_encoder: bool,
    strip_punctuation: bool,
    max_batch_seconds: float | None,
    batch_size: int,
    resume: bool,
    overwrite: bool,
    augment_speeds: str,
    augment_noise_store: Path | None,
    augment_noise_prob: float,
    augment_snr_db: tuple[float, float],
    augment_gain_db: tuple[float, float],
    mask_time_prob: float | None,
    mask_feature_prob: float | None,
    exclude_list: Path | None,
    exclude_cer_above: float | None,
    scores: Path | None,
    **training: Any,
) -> None:
    """Train a run directory: processor, adapter (or model), checkpoints, metrics."""
    from trainer.fit import SetupInterrupted, fit  # torch and transformers load only for commands that need them
    from trainer.run import interrupted_message

    if resume:
        refuse_settings_on_resume(click.get_current_context())
    elif store is None:
        raise TrainerError("--store is required (unless continuing a run with --resume)")
    augment = parse_augment(
        augment_speeds,
        augment_noise_store,
        augment_noise_prob,
        augment_snr_db,
        augment_gain_db,
        mask_time_prob,
        mask_feature_prob,
    )
    for option, other, consequence in (
        ("--augment-noise-store", augment_noise_store, "its speech becomes the noise"),
        ("--eval-store", eval_store, "its scores say nothing of unseen speech"),
    ):
        if store is not None and other is not None and store.resolve() == other.resolve():
            click.echo(f"warning: {option} is the training store: {consequence}", err=True)
    inputs = [path for path in (exclude_list, scores) if path is not None]  # beside the config's stores
    # A resumed run keeps the exclusion its run.json recorded.
    exclusion = Exclusion() if resume else resolve_exclusion(store, exclude_list, exclude_cer_above, scores)
    targets = tuple(t.strip() for t in lora_targets.split(",") if t.strip())
    config = RunConfig(
        store=str(store or ""),
        eval_store=str(eval_store) if eval_store else None,
        base_model=base_model,
        finetune=FinetuneOptions(finetune, lora_r, lora_alpha, lora_dropout, targets, train_feature_encoder),
        text=TextOptions(strip_punctuation),
        batch=batch_options(max_batch_seconds, batch_size),
        augment=augment,
        exclusion=exclusion,
        **training,
    )
    overrides = {name: training[name] for name in RESUME_OVERRIDES if given(click.get_current_context(), name)}
    try:
        result = fit(config, out, resume=resume, overwrite=overwrite, inputs=inputs, overrides=overrides)
    except KeyboardInterrupt as interrupt:
        click.echo(interrupted_message(out, training_started=not isinstance(interrupt, SetupInterrupted)), err=True)
        sys.exit(130)
    if not result.main_process:
        return
    if result.best is not None:
        click.echo(
            f"best eval at step {int(result.best['step'])}: WER {result.best['wer']:.4f}  CER {result.best['cer']:.4f}"
        )
    trained = f"trained {result.steps - result.first_step} steps"
    if 0 < result.first_step < result.steps:  # a resumed run: which steps this call trained
        trained += f" (steps {result.first_step + 1}-{result.steps})"
    click.echo(f"{trained} in {result.seconds:.0f} s; final weights from step {result.final_step} in {out}")


def given(ctx: click.Context, name: str) -> bool:
    """Whether the user gave parameter `name` (on the command line or in the environment)."""
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def refuse_settings_on_resume(ctx: click.Context) -> None:
    """--resume continues with the run's saved settings: refuse any other setting rather than ignore it."""
    allowed = {"out", "resume", *RESUME_OVERRIDES}
    ignored = [p.opts[0] for p in ctx.command.params if p.name not in allowed and p.name and given(ctx, p.name)]
    if ignored:
        raise TrainerError(
            f"--resume continues the run with its saved settings; drop {', '.join(ignored)} "
            f"(only {', '.join('--' + name for name in RESUME_OVERRIDES)} may change), or start a new run"
        )


@main.command("evaluate")
@click.option("--store", required=True, type=PATH, help="Store with transcripts.")
@click.option("--run", "run_dir", required=True, type=PATH, help="Run directory written by trainer fit.")
@inference_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def evaluate_command(store: Path, run_dir: Path, device: str, workers: int, as_json: bool) -> None:
    """WER and CER with the adapter and, for LoRA, with the adapter disabled."""
    from trainer.evaluate import evaluate_run

    results = evaluate_run(run_dir, store, device, workers, warn=lambda message: click.echo(message, err=True))
    if as_json:
        click.echo(json.dumps(finite({name: asdict(scores) for name, scores in results.items()}), allow_nan=False))
        return
    for name, scores in results.items():
        click.echo(f"{name:8s} WER {scores.wer:.4f}  CER {scores.cer:.4f}  ({scores.utterances} utterances)")


@main.command("transcribe")
@click.option("--store", required=True, type=PATH)
@click.option("--run", "run_dir", required=True, type=PATH, help="Run directory written by trainer fit.")
@click.option("--out", required=True, type=PATH, help="CSV to write: audio_filepath, manifest fields, prediction.")
@inference_options
@user_errors
def transcribe_command(store: Path, run_dir: Path, out: Path, device: str, workers: int) -> None:
    """Transcribe every utterance of a store (text may be empty) into a CSV."""
    from trainer.transcribe import transcribe_store

    rows = transcribe_store(run_dir, store, out, device, workers)
    click.echo(f"wrote {rows} transcripts to {out}")


@main.command("score")
@click.option("--store", required=True, type=PATH, help="Store with transcripts.")
@click.option("--run", "run_dir", required=True, type=PATH, help="Run directory written by trainer fit.")
@click.option("--out", required=True, type=PATH, help="CSV to write, worst utterance first.")
@inference_options
@user_errors
def score_command(store: Path, run_dir: Path, out: Path, device: str, workers: int) -> None:
    """Score every utterance (CTC loss per character, greedy CER/WER), worst first, to find mislabels."""
    from trainer.score import score_store

    rows = score_store(run_dir, store, out, device, workers)
    click.echo(f"wrote {rows} scores to {out}, worst first")


@main.command("export")
@click.option("--run", "run_dir", required=True, type=PATH, help="Run directory written by trainer fit.")
@click.option("--out", required=True, type=PATH, help="Directory for the standalone model and processor.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@user_errors
def export_command(run_dir: Path, out: Path, overwrite: bool) -> None:
    """Merge the adapter into the base: a model directory transformers.pipeline loads."""
    from trainer.export import export_run

    export_run(run_dir, out, overwrite)
    click.echo(f"exported to {out}")


@main.command("plan")
@click.option("--store", required=True, type=PATH)
@batch_size_options
@click.option("--world-size", type=COUNT, default=1, help="Processes the epoch is split across.")
@click.option("--seed", type=SEED, default=0)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def plan_command(
    store: Path, max_batch_seconds: float | None, batch_size: int, world_size: int, seed: int, as_json: bool
) -> None:
    """What the length-grouped sampler does with these settings (no model is loaded)."""
    from trainer.plan import format_plan, plan_store

    plan = plan_store(store, batch_options(max_batch_seconds, batch_size), seed, world_size)
    if as_json:
        click.echo(json.dumps(finite(plan), allow_nan=False))
    else:
        for line in format_plan(plan):
            click.echo(line)


if __name__ == "__main__":
    main()
