"""Vocabulary and processor: every store text encodes to labels that decode back exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from featstore import open_store
from trainer.config import normalize_text
from trainer.errors import TrainerError
from trainer.inference import greedy_ids, output_frames
from trainer.model import build_tiny_random
from trainer.vocab import (
    PAD,
    UNK,
    WORD_DELIMITER,
    build_processor,
    build_vocab,
    decode_labels,
    decode_predictions,
    encode_labels,
    encode_texts,
    load_processor,
)


def test_store_text_round_trips_through_saved_processor(stores, tmp_path: Path) -> None:
    texts = open_store(stores.train).texts
    vocab = build_vocab(texts)
    build_processor(vocab, tmp_path).save_pretrained(str(tmp_path))
    processor = load_processor(tmp_path)
    assert processor.tokenizer.bos_token is None and processor.tokenizer.eos_token is None
    for text in texts:
        assert decode_labels(processor, encode_labels(processor, text)) == text


def test_repeated_characters_survive_decoding(tmp_path: Path) -> None:
    processor = build_processor(build_vocab(["hello all"]), tmp_path)
    assert decode_labels(processor, encode_labels(processor, "hello all")) == "hello all"


def test_vocab_is_sorted_characters_then_delimiter_unk_pad() -> None:
    vocab = build_vocab(["ba c", "ab"])
    assert list(vocab) == ["a", "b", "c", WORD_DELIMITER, UNK, PAD]


def test_normalization_lowercases_and_optionally_strips_punctuation() -> None:
    assert normalize_text("  Hello,   World! ") == "hello, world!"
    assert normalize_text("Hello, World! It's", strip_punctuation=True) == "hello world it's"


def test_text_without_characters_is_a_user_error() -> None:
    with pytest.raises(TrainerError, match="no characters"):
        build_vocab(["", " "])


def test_encode_texts_gives_the_tokenizers_ids(stores, tmp_path: Path) -> None:
    texts = [normalize_text(text) for text in open_store(stores.train).texts]
    processor = build_processor(build_vocab(texts), tmp_path)
    odd = ["", "a  b", " a ", "x|y", "é ß 日本 😀", "a\tb", "[pad]", "abc"]
    for batch in [texts, odd, [*odd, "a [UNK] b", "a[PAD]b"]]:  # the last through the tokenizer
        ids, offsets = encode_texts(processor, batch)
        assert ids.dtype == np.int64 and offsets.size == len(batch) + 1
        assert [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(batch))] == [
            encode_labels(processor, text) for text in batch
        ]


def test_greedy_decoding_reads_each_row_only_up_to_its_own_frames(tmp_path: Path) -> None:
    vocab = build_vocab(["ab"])
    processor = build_processor(vocab, tmp_path)
    model = build_tiny_random(len(vocab), vocab[PAD], seed=0)
    mask = torch.zeros((2, 16_000), dtype=torch.bool)
    mask[0, :] = True
    mask[1, :8_000] = True  # the second row is padded to the first's length
    frames = output_frames(model, mask).tolist()
    assert frames[1] < frames[0]
    logits = torch.zeros((2, frames[0], len(vocab)))
    logits[:, :, vocab[PAD]] = 1.0  # blank everywhere...
    logits[0, 0, vocab["a"]] = logits[1, 0, vocab["b"]] = 2.0  # ...but one letter per row
    logits[1, frames[1], vocab["a"]] = 2.0  # and a letter on a padded frame, past the second row's audio
    assert decode_predictions(processor, greedy_ids(model, logits, mask)) == ["a", "b"]
