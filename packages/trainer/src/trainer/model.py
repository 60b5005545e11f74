"""The model: a wav2vec2-family CTC model with a LoRA adapter (default) or fully fine-tuned.

`tiny-random` builds a small randomly initialised wav2vec2 with XLS-R's architecture flags
(layer-norm convolutional feature encoder, stable layer norm): measured here, that variant
learns a synthetic language from scratch on a CPU in about two minutes, the base-style one
(group-norm encoder, post-LN) hardly at all. It needs no download, so tests and the
Quickstart use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCTC, PreTrainedModel, Wav2Vec2Config, Wav2Vec2ForCTC

from trainer.config import TINY_RANDOM, FinetuneOptions
from trainer.errors import TrainerError
from trainer.vocab import PAD


def tiny_config(vocab_size: int, pad_token_id: int) -> Wav2Vec2Config:
    """Hidden 128, 3 layers, 7 conv layers of 64 channels (stride 320 like wav2vec2), no dropout or masking."""
    return Wav2Vec2Config(
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=256,
        conv_dim=(64,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=8,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,  # as in XLS-R; measured here, it leaves the all-blank CTC plateau ~50 steps sooner
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
    )


# The CTC head's initial bias for the blank: about the log-odds of blank frames in speech (most
# 20 ms frames are between characters). A model that starts at ~uniform output first spends its
# steps learning that prior and then sits on the all-blank plateau; measured on the tone language
# (docs/BENCHMARKS.md), starting from it left the plateau after ~40 steps instead of ~275.
BLANK_BIAS = 5.0


def build_tiny_random(vocab_size: int, pad_token_id: int, seed: int, **config: Any) -> Wav2Vec2ForCTC:
    """`config` overrides `tiny_config`'s values (SpecAugment masking, for one)."""
    torch.manual_seed(seed)
    settings = tiny_config(vocab_size, pad_token_id)
    settings.update(config)
    model = Wav2Vec2ForCTC(settings)
    with torch.no_grad():
        model.lm_head.bias[pad_token_id] = BLANK_BIAS
    return model


def load_base(name: str, vocab: dict[str, int], **config: Any) -> PreTrainedModel:
    """A CTC model from a hub id or local directory, with a CTC head for our vocabulary.

    A pretraining checkpoint (like xlsr-53) has no head, and a fine-tuned one has a head for
    its own vocabulary: the head is new unless the base directory's vocab.json is ours. A head
    of the same size for other letters would otherwise be kept, and start out wrong. `config`
    overrides values of the model's own config (SpecAugment masking, for one).
    """
    model = _load_pretrained(name, len(vocab), vocab[PAD], **config)
    if _saved_vocab(name) != vocab:
        fresh_head(model)
    return model


def _saved_vocab(name: str) -> dict[str, int] | None:
    vocab_file = Path(name).expanduser() / "vocab.json"
    if not vocab_file.is_file():
        return None
    loaded: dict[str, int] = json.loads(vocab_file.read_text(encoding="utf-8"))
    return loaded


def fresh_head(model: PreTrainedModel) -> None:
    """Re-initialise the CTC head from a fixed seed (the same head every load), blank bias as tiny-random's."""
    generator = torch.Generator().manual_seed(0)
    head: torch.nn.Linear = model.lm_head
    with torch.no_grad():
        head.weight.normal_(0.0, model.config.initializer_range, generator=generator)
        head.bias.zero_()
        head.bias[model.config.pad_token_id] = BLANK_BIAS


def _load_pretrained(name: str, vocab_size: int, pad_token_id: int, **config: Any) -> PreTrainedModel:
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise TrainerError(
            f"base model directory {name} does not exist (give a hub id, a model directory, or {TINY_RANDOM!r})"
        )
    try:
        return AutoModelForCTC.from_pretrained(
            name,
            vocab_size=vocab_size,
            pad_token_id=pad_token_id,
            ctc_loss_reduction="mean",
            ctc_zero_infinity=True,
            ignore_mismatched_sizes=True,
            **config,
        )
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrainerError(
            f"cannot load base model {name!r} (a hub id, a local model directory, or {TINY_RANDOM!r}): {first_line}"
        ) from None


def prepare(model: PreTrainedModel, options: FinetuneOptions) -> torch.nn.Module:
    """Freeze what should not train and wrap for LoRA; the CTC head always trains."""
    if options.method == "lora":
        config = LoraConfig(
            r=options.lora_r,
            lora_alpha=options.lora_alpha,
            lora_dropout=options.lora_dropout,
            target_modules=list(options.target_modules),
            # The head is new for our vocabulary: train it and save it with the adapter.
            modules_to_save=["lm_head"],
        )
        try:
            return get_peft_model(model, config)
        except ValueError as error:
            raise TrainerError(f"LoRA: {str(error).splitlines()[0]} (check --lora-targets)") from None
    if options.method == "full":
        if not options.train_feature_encoder:
            model.freeze_feature_encoder()  # type: ignore[operator]
        return model
    raise TrainerError(f"unknown fine-tuning method {options.method!r}; use lora or full")


def load_adapter(base: PreTrainedModel, adapter_dir: Path) -> PeftModel:
    return PeftModel.from_pretrained(base, str(adapter_dir))


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights that training changes: what a checkpoint has to keep."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: t.detach().cpu().clone() for name, t in model.state_dict().items() if name in names}
