"""Variable-length token rows with an easy rule for classification: the label is whether token 7 occurs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MARK, VOCAB = 7, 12


def token_class_rows(num_rows: int, seed: int, min_len: int = 3, max_len: int = 12) -> pa.Table:
    """``ids`` (list<int64>, ``min_len`` to ``max_len`` tokens in ``[1, VOCAB)``) and ``label``: 1
    where ``MARK`` occurs (half the rows, at a random position), else 0."""
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for index in range(num_rows):
        row = rng.choice([t for t in range(1, VOCAB) if t != MARK], size=rng.integers(min_len, max_len + 1))
        if index % 2:
            row[rng.integers(len(row))] = MARK
        ids.append(row.tolist())
        labels.append(index % 2)
    return pa.table({"ids": pa.array(ids, pa.list_(pa.int64())), "label": pa.array(labels, pa.int64())})


def write_token_classes(root: Path, num_train: int = 512, num_val: int = 128) -> tuple[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(token_class_rows(num_train, 0), root / "train.parquet")
    pq.write_table(token_class_rows(num_val, 1), root / "val.parquet")
    return str(root / "train.parquet"), str(root / "val.parquet")


def token_bag(num_features: int, num_classes: int, image_shape=None, vocab_size: int = VOCAB, width: int = 16):
    """A one-tensor student for token rows: the mean embedding of a row's tokens (padding id 0
    left out), then a linear head. Its forward takes ``[N, T]`` ids and nothing else."""
    import torch

    class TokenBag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.EmbeddingBag(vocab_size, width, mode="mean", padding_idx=0)
            self.head = torch.nn.Linear(width, num_classes)

        def forward(self, ids):
            return self.head(self.embed(ids))

    return TokenBag()
