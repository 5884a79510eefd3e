"""The training step. Read this file first.

One step = one parallel strategy x one precision policy x an ordered list of
techniques. The order below is the contract every strategy, policy and technique
is written against:

    forward + task loss      under the precision policy's autocast
    technique losses         in list order (e.g. distillation adds its KD term)
    backward                 the policy may scale the loss; DDP all-reduces here
    after_backward           in list order (e.g. mask the gradients of pruned weights)
    optimizer step           the policy may unscale, and skip the step on overflow
    after_step               in list order (e.g. re-apply masks to the weights)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rayeffi.parallel.base import Strategy
from rayeffi.techniques.base import Technique
from rayeffi.techniques.precision import Precision


@dataclass
class StepParts:
    """Everything a step touches; built once per stage by the worker loop."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    strategy: Strategy
    precision: Precision
    techniques: list[Technique] = field(default_factory=list)


def task_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # reductions in FP32 whatever dtype the forward ran in
    return F.cross_entropy(outputs.float(), targets)


def train_step(
    parts: StepParts, inputs: torch.Tensor, targets: torch.Tensor, extras: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """One optimizer step on this worker's share of the global batch; returns the loss.

    ``extras``: the batch's columns beyond features and labels (e.g. cached teacher logits).
    """
    model, precision, techniques = parts.model, parts.precision, parts.techniques
    extras = extras or {}

    with precision.autocast():
        outputs = model(inputs)
        loss = task_loss(outputs, targets)
        for technique in techniques:
            loss = technique.loss(loss, outputs, inputs, targets, extras)

    precision.backward(loss)  # DDP all-reduces gradients during backward: sync point

    for technique in techniques:
        technique.after_backward(model)

    precision.step(parts.optimizer)

    for technique in techniques:
        technique.after_step(model)

    parts.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@torch.no_grad()
def eval_step(parts: StepParts, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed task loss and number of correct predictions on one batch."""
    with parts.precision.autocast():
        outputs = parts.model(inputs)
    loss_sum = F.cross_entropy(outputs.float(), targets, reduction="sum")
    correct = (outputs.argmax(dim=1) == targets).sum()
    return loss_sum, correct
