"""Single-process references that the parallel strategies are compared against."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn


def full_batch_sgd(
    parquet: Path, make_model: Callable[[], nn.Module], steps: int, lr: float, momentum: float
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Plain SGD with momentum on every row of ``parquet`` at once, ``steps`` times, from
    ``make_model()`` built at seed 0; returns the final weights and each step's loss."""
    table = pq.read_table(parquet)
    inputs = torch.tensor(np.stack(table["features"].to_numpy(zero_copy_only=False)))
    targets = torch.tensor(table["label"].to_numpy())
    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.state_dict(), losses
