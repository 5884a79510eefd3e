"""Small, deterministic problems for the GPU tier (no Ray, no pydantic)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rayeffi.models.mlp import MLP
from rayeffi.parallel import DataParallel
from rayeffi.worker.build import assemble


def mlp_problem(seed: int = 0, rows: int = 64, num_features: int = 64):
    """An MLP (64-128-64-10, the CPU tests' size) with its seed's weights, and a batch."""
    torch.manual_seed(seed)
    model = MLP(num_features, 10, (128, 64))
    generator = torch.Generator().manual_seed(seed + 1)
    inputs = torch.randn(rows, num_features, generator=generator)
    targets = torch.randint(0, 10, (rows,), generator=generator)
    return model, inputs, targets


def parts_on(device, precision, model: nn.Module, techniques=(), lr: float = 0.1, momentum: float = 0.0,
             strategy=None):
    strategy = strategy or DataParallel(device=device)
    return assemble(model, strategy, precision,
                    lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum), list(techniques))


def needs_pydantic():
    """The recipe configs are pydantic models; the bare GPU machine may lack pydantic."""
    return pytest.importorskip("pydantic", reason="pydantic is not installed: the recipe configs need it")
