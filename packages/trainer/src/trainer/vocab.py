"""Character vocabulary, text normalization and the processor saved in a run directory.

The vocabulary follows the notebook: every character of the (normalized) training and eval
text, the space spelled `|` (the CTC tokenizer's word delimiter), then `[UNK]` and `[PAD]`;
`[PAD]` doubles as the CTC blank. The processor is a stock `Wav2Vec2Processor`, so
`Wav2Vec2Processor.from_pretrained(run_dir / "processor")` and `transformers.pipeline` load it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

from trainer.errors import TrainerError

WORD_DELIMITER = "|"
UNK = "[UNK]"
PAD = "[PAD]"
SAMPLE_RATE = 16_000


def build_vocab(texts: Iterable[str]) -> dict[str, int]:
    """Token ids: sorted characters (space as `|`), then `[UNK]`, `[PAD]`.

    Sorted rather than in set order (the notebook's) so the same text always gives the same ids.
    """
    chars = sorted({c for text in texts for c in text} - {" "})
    if not chars:
        raise TrainerError(
            "the store's text has no characters to build a vocabulary from; train on a store with transcripts"
        )
    tokens = [*chars, WORD_DELIMITER, UNK, PAD]
    return {token: i for i, token in enumerate(tokens)}


def build_processor(vocab: dict[str, int], directory: Path) -> Wav2Vec2Processor:
    """Write `vocab.json` into `directory` and return a processor over it (not yet saved whole)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.json"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False, indent=1), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(
        str(vocab_file),
        unk_token=UNK,
        pad_token=PAD,
        word_delimiter_token=WORD_DELIMITER,
        bos_token=None,
        eos_token=None,
    )
    # The store's audio is already normalized exactly like this; do_normalize=True is kept so the
    # saved processor also prepares raw audio correctly (pipeline, transcribing new files).
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    return Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def unseen_characters(processor: Wav2Vec2Processor, texts: Iterable[str]) -> tuple[list[str], float]:
    """Characters of normalized `texts` outside the vocabulary, and their share of all characters.

    A model cannot write a character it has no token for: each one is an error it cannot avoid.
    """
    vocab = processor.tokenizer.get_vocab()
    counts: dict[str, int] = {}
    for text in texts:
        for char in text.replace(" ", ""):
            counts[char] = counts.get(char, 0) + 1
    unseen = sorted(c for c in counts if c not in vocab)
    total = sum(counts.values())
    return unseen, (sum(counts[c] for c in unseen) / total if total else 0.0)


def load_processor(directory: Path) -> Wav2Vec2Processor:
    return Wav2Vec2Processor.from_pretrained(str(directory))


def encode_labels(processor: Wav2Vec2Processor, text: str) -> list[int]:
    """Token ids of normalized `text`; characters outside the vocabulary become `[UNK]`."""
    return list(processor.tokenizer(text).input_ids)


def encode_texts(processor: Wav2Vec2Processor, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Label ids of many normalized texts at once: text `i`'s are `ids[offsets[i]:offsets[i + 1]]`.

    The same ids as `encode_labels` on each text (the CTC tokenizer spells a space as the word
    delimiter, then looks each character up), by one vectorised lookup instead of 0.2-0.7 ms of
    Python per text. Texts holding a token the tokenizer treats specially (`[UNK]` spelled out)
    go through the tokenizer.
    """
    tokenizer = processor.tokenizer
    vocab: dict[str, int] = tokenizer.get_vocab()
    special = {token for token in vocab if len(token) > 1} | {
        t.content for t in tokenizer.added_tokens_decoder.values() if t.lstrip or t.rstrip or t.single_word
    }
    joined = "\n".join(texts)
    if tokenizer.do_lower_case or any(token in joined for token in special):
        return _flat([np.asarray(encode_labels(processor, text), dtype=np.int64) for text in texts])
    spelled = [text.replace(" ", tokenizer.word_delimiter_token) for text in texts]
    chars = np.array(sorted(ord(token) for token in vocab if len(token) == 1), dtype=np.uint32)
    char_ids = np.array([vocab[chr(code)] for code in chars], dtype=np.int64)
    codes = np.frombuffer("".join(spelled).encode("utf-32-le"), dtype="<u4")
    found = np.minimum(np.searchsorted(chars, codes), chars.size - 1)
    ids = np.where(chars[found] == codes, char_ids[found], vocab[tokenizer.unk_token])
    return ids, _offsets([len(text) for text in spelled])


def _flat(pieces: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    return ids, _offsets([piece.size for piece in pieces])


def _offsets(lengths: list[int]) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def decode_labels(processor: Wav2Vec2Processor, ids: Iterable[int]) -> str:
    """Reference text back from label ids: no CTC merging of repeats ("hello" stays "hello")."""
    return str(processor.tokenizer.decode([i for i in ids if i >= 0], group_tokens=False))


def decode_predictions(processor: Wav2Vec2Processor, ids: list[list[int]]) -> list[str]:
    """Greedy CTC decoding of argmax ids: merge repeats, drop blanks (`[PAD]`)."""
    return [str(text) for text in processor.batch_decode(ids)]
