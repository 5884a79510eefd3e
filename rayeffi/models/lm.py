"""A small decoder-only transformer language model (GPT-style: Radford et al. 2018/2019).

Token embedding plus learned positions, ``num_layers`` pre-norm blocks of causal
self-attention and a 4x MLP, a final norm and an (untied) linear head over the
vocabulary. ``forward`` maps ``[N, T]`` int64 token ids to ``[N, T, vocab_size]``
logits; position ``t`` sees tokens ``0..t`` only, so a row padded at its end
(``data/columns.py``) needs no attention mask. The head is not tied to the embedding:
DSD then prunes the head without silently pruning the embedding too. Dropout defaults
to 0, so parallel and single-process runs stay comparable. ``pipeline_units()`` gives
the embedding, each block and the head as pipeline units.

Under CPU autocast the attention itself runs in FP32 (:func:`causal_attention`): the
projections around it stay in the policy's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + causal mask) v`` (``F.scaled_dot_product_attention``), in FP32 under CPU autocast.

    PyTorch's CPU flash-attention backward in BF16 is several times slower than in FP32
    (on an avx512_bf16 Xeon it took 60% of the ``lm`` step, making the BF16 step twice the
    FP32 one): there the attention is computed in FP32 and its output cast back to the
    dtype autocast gave ``q``, so the surrounding matmuls keep their BF16 speed.
    """
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):  # precision cast: attention in FP32, output back to q's dtype
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, dropout_p=dropout_p)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"model.num_heads {num_heads} must divide model.d_model {d_model}")
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (y.view(n, t, self.num_heads, d // self.num_heads).transpose(1, 2) for y in (q, k, v))
        y = causal_attention(q, k, v, self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, num_heads, dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Embedding(nn.Module):
    """``[N, T]`` token ids -> ``[N, T, d_model]``: token plus learned position embeddings."""

    def __init__(self, vocab_size: int, seq_len: int, d_model: int):
        super().__init__()
        self.token = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(seq_len, d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.token(ids) + self.position(positions)


class Head(nn.Module):
    def __init__(self, d_model: int, vocab_size: int):
        super().__init__()
        self.ln_f = nn.LayerNorm(d_model)
        self.linear = nn.Linear(d_model, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.ln_f(x))


class TransformerLM(nn.Module):
    def __init__(self, vocab_size: int, seq_len: int, d_model: int = 64, num_layers: int = 2, num_heads: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        self.embed = Embedding(vocab_size, seq_len, d_model)
        self.blocks = nn.Sequential(*[Block(d_model, num_heads, dropout) for _ in range(num_layers)])
        self.head = Head(d_model, vocab_size)
        self.apply(_init)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(ids)))

    def pipeline_units(self):
        """The layers in order, for the pipeline strategy (``parallel/pipeline_split.py``)."""
        return [("embed", self.embed), *[(f"blocks.{i}", b) for i, b in enumerate(self.blocks)], ("head", self.head)]


def _init(module: nn.Module) -> None:
    # GPT-2's initialisation: N(0, 0.02) weights, zero biases
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def transformer_lm(num_features: int, num_classes: int, image_shape=None, vocab_size: int | None = None,
                   **kwargs) -> TransformerLM:
    """The ``module:function`` entry point: ``num_features`` is ``seq_len``, ``num_classes`` the vocabulary."""
    return TransformerLM(vocab_size or num_classes, num_features, **kwargs)
