"""What the model predicts and how it is scored: one class per row, cross-entropy, accuracy.

The step, the pipeline's loss function and evaluation all score through these two
functions, so they agree to the bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def task_loss(outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    # reductions in FP32 whatever dtype the forward ran in
    return F.cross_entropy(outputs.float(), targets, reduction=reduction)


def correct_count(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(dim=1) == targets).sum()
