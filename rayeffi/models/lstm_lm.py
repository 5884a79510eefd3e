"""A character-level LSTM language model (Hochreiter & Schmidhuber 1997; Karpathy's char-rnn).

An embedding of ``d_model``, ``num_layers`` stacked ``nn.LSTM`` layers of ``d_model`` units
(PyTorch's gate layout ``[input, forget, cell, output]`` in ``weight_ih_l*`` /
``weight_hh_l*``, the one cuDNN runs: on a GPU the whole stack is one fused kernel) and a
linear head over the vocabulary. ``forward`` maps ``[N, T]`` int64 token ids to
``[N, T, vocab_size]`` logits; the LSTM is causal, so position ``t`` sees tokens
``0..t`` only. Under BF16/FP16 autocast on a CPU the LSTM computes in FP32
(``precision/policies.py: fp32_layers``).
"""

from __future__ import annotations

import torch
from torch import nn


class LSTMLM(nn.Module):
    def __init__(self, vocab_size: int, d_model: int = 64, num_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.lstm = nn.LSTM(d_model, d_model, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embed(ids))
        return self.head(hidden)
