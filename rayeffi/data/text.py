"""The built-in text: four Shakespeare tragedies (``SOURCES.md``) as byte tokens.

Each byte is a token (vocabulary 256, no tokenizer to ship). The first 90% of the text
is the training split and the last 10% the validation split; each is cut into windows
of ``seq_len + 1`` bytes, ``seq_len`` apart, so every one of a row's ``seq_len``
positions has a next token to predict. Written once per ``seq_len`` under the run's
data cache, as Parquet with a ``tokens`` ``list<int64>`` column.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

VOCAB_SIZE = 256
TRAIN_FRACTION = 0.9


def text_bytes() -> np.ndarray:
    return np.frombuffer((resources.files("rayeffi.data") / "text.txt").read_bytes(), dtype=np.uint8)


def write_text_dataset(seq_len: int, cache_dir: Path) -> tuple[str, str]:
    """``(train, val)`` Parquet paths of ``seq_len + 1``-byte windows (written once)."""
    root = Path(cache_dir) / f"text-{seq_len}"
    train, val = root / "train.parquet", root / "val.parquet"
    if val.exists():
        return str(train), str(val)
    root.mkdir(parents=True, exist_ok=True)
    data = text_bytes().astype(np.int64)
    cut = int(len(data) * TRAIN_FRACTION)
    _write(_windows(data[:cut], seq_len), train)
    _write(_windows(data[cut:], seq_len), val)  # written last: its presence marks the set complete
    return str(train), str(val)


def unigram_perplexity() -> float:
    """The validation perplexity of predicting each byte by its training frequency (the baseline
    a language model must beat)."""
    data = text_bytes()
    cut = int(len(data) * TRAIN_FRACTION)
    counts = np.bincount(data[:cut], minlength=VOCAB_SIZE).astype(np.float64) + 1.0  # add-one: no zero
    log_p = np.log(counts / counts.sum())
    return float(np.exp(-log_p[data[cut:]].mean()))


def _windows(data: np.ndarray, seq_len: int) -> np.ndarray:
    starts = np.arange(0, len(data) - seq_len - 1, seq_len)
    return data[starts[:, None] + np.arange(seq_len + 1)[None, :]]


def _write(windows: np.ndarray, path: Path) -> None:
    column = pa.ListArray.from_arrays(
        pa.array(np.arange(0, windows.size + 1, windows.shape[1]), type=pa.int32()), pa.array(windows.reshape(-1)))
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.table({"tokens": column}), tmp)
    os.replace(tmp, path)
