"""A run's settings as plain, frozen data: parsed once from the command line, saved as run.json.

Nothing here imports torch or transformers, so `trainer --help` and `trainer plan` start fast.
"""

from __future__ import annotations

import dataclasses
import re
import types
import unicodedata
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin, get_type_hints

from featstore.sampler import DurationBucketSampler, for_store
from trainer.augment import AugmentOptions
from trainer.exclude import Exclusion

if TYPE_CHECKING:
    from featstore import FeatStore

TINY_RANDOM = "tiny-random"
Method = Literal["lora", "full"]  # train a LoRA adapter (and the CTC head), or every weight
Schedule = Literal["linear", "constant"]  # after warm-up: linear decay to zero, or constant
Device = Literal["auto", "cpu", "cuda", "mps"]  # auto: cuda, then mps, then cpu
DEFAULT_BASE = "facebook/wav2vec2-large-xlsr-53"
# Unicode punctuation and symbols except the apostrophe, which is a letter in many orthographies.
_PUNCTUATION = re.compile(r"[^\w\s']|_")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str, strip_punctuation: bool = False) -> str:
    """Lower-case and collapse whitespace, like featstore's `text`; optionally drop punctuation."""
    text = unicodedata.normalize("NFC", text).lower()
    if strip_punctuation:
        text = _PUNCTUATION.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


@dataclass(frozen=True)
class TextOptions:
    """How store text becomes labels; saved in the run so evaluation normalizes the same way."""

    strip_punctuation: bool = False

    def normalize(self, text: str) -> str:
        return normalize_text(text, self.strip_punctuation)


@dataclass(frozen=True)
class BatchOptions:
    """Batch shape: up to `max_batch_seconds` of padded audio, or `batch_size` utterances."""

    max_batch_seconds: float | None = None
    batch_size: int | None = 2  # the notebook's per-device batch

    def sampler(self, store: FeatStore, **options: Any) -> DurationBucketSampler:
        """featstore's length-grouped sampler over `store` with these settings."""
        return for_store(store, **self.sizing(), **options)

    def sizing(self) -> dict[str, Any]:
        """The sampler's keyword for the batch size: `max_batch_seconds` or `batch_size`."""
        if self.max_batch_seconds is not None:
            return {"max_batch_seconds": self.max_batch_seconds}
        return {"batch_size": self.batch_size}


@dataclass(frozen=True)
class FinetuneOptions:
    """What trains. Defaults are the notebook's LoRA settings."""

    method: Method = "lora"
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    train_feature_encoder: bool = False  # --finetune full only


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a run trains. Defaults follow the notebook."""

    store: str
    eval_store: str | None = None
    base_model: str = DEFAULT_BASE
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)
    text: TextOptions = field(default_factory=TextOptions)
    batch: BatchOptions = field(default_factory=BatchOptions)
    grad_accum: int = 4
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    schedule: Schedule = "linear"
    max_grad_norm: float = 1.0
    epochs: int = 15
    max_steps: int | None = None
    eval_steps: int = 200
    logging_steps: int = 50
    keep_best: int = 2
    seed: int = 0
    workers: int = 0
    gradient_checkpointing: bool = True
    mixed_precision: bool = True
    device: Device = "auto"
    augment: AugmentOptions = field(default_factory=AugmentOptions)  # training audio only; never in evaluation
    exclusion: Exclusion = field(default_factory=Exclusion)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def input_paths(self) -> list[str]:
        """What the run reads: stores, and the base model (a hub id unless it names a local path)."""
        paths = [self.store, self.eval_store, self.augment.noise_store, self.base_model]
        return [path for path in paths if path]

    def with_absolute_paths(self) -> RunConfig:
        """The same run with its local inputs as absolute paths, so run.json means the same from any
        directory (evaluate, export and --resume may run elsewhere)."""
        return replace(
            self,
            store=absolute(self.store),
            eval_store=absolute(self.eval_store) if self.eval_store else None,
            base_model=absolute(self.base_model) if is_local(self.base_model) else self.base_model,
            augment=replace(
                self.augment,
                noise_store=absolute(self.augment.noise_store) if self.augment.noise_store else None,
            ),
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        finetune = dict(data["finetune"], target_modules=tuple(data["finetune"]["target_modules"]))
        return cls(
            **{
                **data,
                "finetune": FinetuneOptions(**finetune),
                "text": TextOptions(**data["text"]),
                "batch": BatchOptions(**data["batch"]),
                # Runs written before augmentation and exclusion existed had neither.
                "augment": AugmentOptions.from_json(data["augment"]) if "augment" in data else AugmentOptions(),
                "exclusion": Exclusion.from_json(data["exclusion"]) if "exclusion" in data else Exclusion(),
            }
        )


def is_local(base_model: str) -> bool:
    return base_model != TINY_RANDOM and Path(base_model).exists()


def absolute(path: str) -> str:
    """A local path made absolute; an fsspec URL (or an empty string) as it is."""
    return path if not path or "://" in path else str(Path(path).absolute())


def mistyped(value: Any, hint: Any, where: str) -> str | None:
    """The first field of `value` (a settings dataclass, as read back from run.json) whose value is
    not of its declared type, named like `config.batch.batch_size`; None when all are."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            return where
        hints = get_type_hints(hint)
        for item in dataclasses.fields(hint):
            found = mistyped(getattr(value, item.name), hints[item.name], f"{where}.{item.name}")
            if found:
                return found
        return None
    return None if of_type(value, hint) else where


def of_type(value: Any, hint: Any) -> bool:
    """`isinstance` for the annotations settings use: X | None, Literal, tuple[X, ...], tuple[X, Y]."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return any(of_type(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(of_type(item, args[0]) for item in value)
        return len(value) == len(args) and all(of_type(item, arg) for item, arg in zip(value, args, strict=True))
    if hint is type(None):
        return value is None
    if hint in (int, float):  # JSON has one kind of number: an int is a float here, a bool is neither
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, hint)
