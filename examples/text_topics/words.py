"""A word-level tokenizer built from ``vocab.txt`` beside this file (no download): the example's
``data.transform``, a batch of ``text`` rows in, ``input_ids`` out."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

SEQ_LEN = 12
PAD_ID, UNKNOWN_ID = 0, 1
VOCAB = {word: index + 2 for index, word in enumerate(Path(__file__).with_name("vocab.txt").read_text().split())}
"""Word -> id; ids 0 (padding) and 1 (a word not in the file) come first."""


def encode(text: str) -> list[int]:
    """``text``'s lower-cased words as ids, cut or padded (with ``PAD_ID``) to ``SEQ_LEN``."""
    ids = [VOCAB.get(word, UNKNOWN_ID) for word in text.lower().split()][:SEQ_LEN]
    return ids + [PAD_ID] * (SEQ_LEN - len(ids))


def tokenise(batch: pa.Table) -> dict[str, list]:
    """``text`` -> ``input_ids`` (``SEQ_LEN`` ids per row); ``label`` kept."""
    return {"input_ids": [encode(text) for text in batch["text"].to_pylist()], "label": batch["label"]}
