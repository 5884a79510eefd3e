"""A small transformer encoder classifier (Vaswani et al., "Attention Is All You Need", 2017).

Each feature row is read as a sequence of ``num_tokens`` equal pieces (the 8x8 digits:
8 rows of 8 pixels), embedded linearly with a learned position embedding, passed
through pre-norm encoder layers, mean-pooled and classified. Recipes name it by path:
``model: {name: "rayeffi.models.transformer:transformer_classifier", kwargs: {...}}``.
Dropout defaults to 0, so pipelined and single-process training stay comparable.
"""

from __future__ import annotations

import torch
from torch import nn


class TokenEmbedding(nn.Module):
    """``[N, T*D_in]`` rows -> ``[N, T, width]`` token embeddings plus learned positions."""

    def __init__(self, num_features: int, num_tokens: int, width: int):
        super().__init__()
        if num_features % num_tokens:
            raise ValueError(f"num_tokens {num_tokens} must divide the {num_features} features of a row")
        self.num_tokens = num_tokens
        self.project = nn.Linear(num_features // num_tokens, width)
        self.position = nn.Parameter(torch.zeros(1, num_tokens, width))
        nn.init.normal_(self.position, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(x.shape[0], self.num_tokens, -1)
        return self.project(tokens) + self.position


class PooledHead(nn.Module):
    """Final norm, mean over tokens, linear classifier."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x).mean(dim=1))


class TransformerClassifier(nn.Module):
    """Embedding -> ``num_layers`` encoder layers -> pooled head; one pipeline unit each."""

    def __init__(self, num_features: int, num_classes: int, num_tokens: int = 8, width: int = 32,
                 num_layers: int = 2, num_heads: int = 4, dropout: float = 0.0):
        super().__init__()
        self.embed = TokenEmbedding(num_features, num_tokens, width)
        self.blocks = nn.Sequential(*[
            nn.TransformerEncoderLayer(width, num_heads, dim_feedforward=2 * width, dropout=dropout,
                                       batch_first=True, norm_first=True)
            for _ in range(num_layers)
        ])
        self.head = PooledHead(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(x)))

    def pipeline_units(self):
        """The layers in order, for the pipeline strategy (``parallel/pipeline_split.py``)."""
        blocks = [(f"blocks.{i}", block) for i, block in enumerate(self.blocks)]
        return [("embed", self.embed), *blocks, ("head", self.head)]


def transformer_classifier(num_features: int, num_classes: int, image_shape=None, **kwargs) -> TransformerClassifier:
    """The ``module:function`` entry point recipes use (``kwargs`` from ``model.kwargs``)."""
    return TransformerClassifier(num_features, num_classes, **kwargs)
