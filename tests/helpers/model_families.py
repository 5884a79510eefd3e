"""Small models of the families people train, written locally (no torchvision, no transformers):
recurrent classifiers, a GPT-2-style block with Hugging Face ``Conv1D``-shaped weights,
an ``nn.MultiheadAttention`` classifier and a ResNet-style CNN with BatchNorm.

Each is a ``module:function`` builder (``num_features, num_classes, image_shape``)."""

from __future__ import annotations

import torch
from torch import nn


class RecurrentClassifier(nn.Module):
    """Each row read as ``num_steps`` time steps; the last hidden state is classified."""

    def __init__(self, num_features, num_classes, cell="LSTM", num_steps=8, hidden=16, num_layers=1):
        super().__init__()
        self.num_steps = num_steps
        self.rnn = getattr(nn, cell)(num_features // num_steps, hidden, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        out, _ = self.rnn(x.reshape(x.shape[0], self.num_steps, -1))
        return self.head(out[:, -1])


def lstm(num_features, num_classes, image_shape=None, **kwargs):
    return RecurrentClassifier(num_features, num_classes, "LSTM", **kwargs)


def gru(num_features, num_classes, image_shape=None, **kwargs):
    return RecurrentClassifier(num_features, num_classes, "GRU", **kwargs)


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 ``Conv1D``: a linear layer whose weight is stored ``[in, out]``."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1)


class GPT2Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.c_attn, self.c_proj = Conv1D(3 * width, width), Conv1D(width, width)
        self.mlp = nn.Sequential()
        self.mlp.c_fc, self.mlp.act, self.mlp.c_proj = Conv1D(4 * width, width), nn.GELU(), Conv1D(width, 4 * width)

    def forward(self, x):
        n, t, w = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(w, dim=2)
        q, k, v = (z.reshape(n, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        attn = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(attn.transpose(1, 2).reshape(n, t, w))
        return x + self.mlp(self.ln_2(x))


class TinyGPT2(nn.Module):
    """Token ids -> GPT-2 blocks -> last token classified; ``lm_head`` tied to ``wte`` as in GPT-2."""

    def __init__(self, num_features, num_classes, vocab_size=17, width=16, heads=2, num_layers=2):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, width), nn.Embedding(num_features, width)
        self.h = nn.ModuleList(GPT2Block(width, heads) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT-2's
        self.score = nn.Linear(width, num_classes, bias=False)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        for block in self.h:
            x = block(x)
        return self.score(self.ln_f(x)[:, -1])


def tiny_gpt2(num_features, num_classes, image_shape=None, **kwargs):
    return TinyGPT2(num_features, num_classes, **kwargs)


class AttentionClassifier(nn.Module):
    def __init__(self, num_features, num_classes, num_tokens=8, width=16, heads=2):
        super().__init__()
        self.num_tokens = num_tokens
        self.embed = nn.Linear(num_features // num_tokens, width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        tokens = self.embed(x.reshape(x.shape[0], self.num_tokens, -1))
        out, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return self.head(out.mean(dim=1))


def attention(num_features, num_classes, image_shape=None, **kwargs):
    return AttentionClassifier(num_features, num_classes, **kwargs)


class BasicBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock`` names: conv1, bn1, conv2, bn2, downsample."""

    def __init__(self, channels):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class Reshape(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


def resnet_bn(num_features, num_classes, image_shape=(1, 8, 8), channels=8, num_blocks=2):
    """A ResNet-style BatchNorm CNN as an ``nn.Sequential`` (so a pipeline can cut it)."""
    return nn.Sequential(
        Reshape(image_shape),
        nn.Conv2d(image_shape[0], channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
        *[BasicBlock(channels) for _ in range(num_blocks)],
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes),
    )
