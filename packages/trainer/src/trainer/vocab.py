"""Character vocabulary, text normalization and the processor saved in a run directory.

The vocabulary follows the notebook: every character of the (normalized) training and eval
text, the space spelled `|` (the CTC tokenizer's word delimiter), then `[UNK]` and `[PAD]`;
`[PAD]` doubles as the CTC blank. The processor is a stock `Wav2Vec2Processor`, so
`Wav2Vec2Processor.from_pretrained(run_dir / "processor")` and `transformers.pipeline` load it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

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


def load_processor(directory: Path) -> Wav2Vec2Processor:
    return Wav2Vec2Processor.from_pretrained(str(directory))


def encode_labels(processor: Wav2Vec2Processor, text: str) -> list[int]:
    """Token ids of normalized `text`; characters outside the vocabulary become `[UNK]`."""
    return list(processor.tokenizer(text).input_ids)


def decode_labels(processor: Wav2Vec2Processor, ids: Iterable[int]) -> str:
    """Reference text back from label ids: no CTC merging of repeats ("hello" stays "hello")."""
    return str(processor.tokenizer.decode([i for i in ids if i >= 0], group_tokens=False))


def decode_predictions(processor: Wav2Vec2Processor, ids: list[list[int]]) -> list[str]:
    """Greedy CTC decoding of argmax ids: merge repeats, drop blanks (`[PAD]`)."""
    return [str(text) for text in processor.batch_decode(ids)]
