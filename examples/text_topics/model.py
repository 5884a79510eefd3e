"""A bag-of-embeddings classifier: token ids in, one topic's logits out."""

from __future__ import annotations

import torch
from torch import nn


class BagOfWords(nn.Module):
    """The mean of the row's word embeddings (padding, id 0, left out), then a linear layer."""

    def __init__(self, vocab_size: int, num_classes: int, width: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=0)  # the first layer: rayeffi sends int64 ids
        self.head = nn.Linear(width, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).unsqueeze(-1).float()
        pooled = (self.embed(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


def build(num_features, num_classes, image_shape=None, vocab_size=128, width=16):
    return BagOfWords(vocab_size, num_classes, width)
