"""The training step. Read this file first.

One step = one parallel strategy (which owns the precision policy) x an ordered list of
techniques. The order below is the contract every strategy, policy and technique is
written against:

    forward_backward         the only part a strategy may replace (a pipeline's schedule):
        forward + task loss      under the precision policy's autocast
        technique losses         in list order (e.g. distillation adds its KD term)
        backward                 the policy may scale the loss; DDP all-reduces here
    finish_step              shared by every strategy:
        after_backward           in list order (e.g. mask the gradients of pruned weights)
        agree_on_gradients       the strategy makes every rank decide alike (pipeline overflow)
        optimizer step           the policy may unscale, and skip the step on overflow
        after_step               in list order (e.g. re-apply masks to the weights)
        zero_grad
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rayeffi.parallel.base import Strategy
from rayeffi.task import CLASSIFICATION, Task, logits_of
from rayeffi.techniques.base import Technique
from rayeffi.techniques.precision import Precision


@dataclass
class StepParts:
    """Everything a step touches; built once per stage (``worker/build.py``)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    strategy: Strategy
    techniques: list[Technique] = field(default_factory=list)
    task: Task = CLASSIFICATION
    """What the model predicts and how it is scored (``task.py``)."""

    @property
    def precision(self) -> Precision:
        return self.strategy.precision  # the strategy owns the precision policy


def train_step(
    parts: StepParts, inputs: torch.Tensor, targets: torch.Tensor, extras: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """One optimizer step on this worker's share of the global batch; returns the loss.

    ``extras``: the batch's columns beyond features and labels (e.g. cached teacher logits).
    """
    run_forward_backward = parts.strategy.forward_backward or forward_backward
    loss = run_forward_backward(parts, inputs, targets, extras or {})
    finish_step(parts)
    return loss


def forward_backward(parts: StepParts, inputs, targets, extras: dict[str, torch.Tensor]) -> torch.Tensor:
    model, precision, task = parts.model, parts.precision, parts.task
    with precision.autocast():
        outputs = logits_of(model(inputs))  # a tensor, or an HF ModelOutput's logits
        # per-token tasks: the global batch's real tokens decide the mean (one all-reduce of a scalar)
        mean_count = parts.strategy.mean_count(task.count(targets)) if task.per_token else None
        loss = task.loss(outputs, targets, mean_count)  # FP32 reduction whatever dtype the forward ran in
        loss = technique_losses(parts.techniques, loss, outputs, inputs, targets, extras)
    precision.backward(loss)  # DDP all-reduces gradients during backward: sync point
    return loss.detach()


def technique_losses(techniques, loss: torch.Tensor, outputs: torch.Tensor, inputs, targets,
                     extras: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss to optimise: each technique's ``loss`` hook in list order, from the task's
    (distillation mixes in its KD term). ``outputs`` are the logits (``task.logits_of``)."""
    for technique in techniques:
        loss = technique.loss(loss, outputs, inputs, targets, extras)
    return loss


def finish_step(parts: StepParts) -> None:
    """Everything after the gradients exist, the same for every strategy."""
    model = parts.model
    for technique in parts.techniques:
        technique.after_backward(model)
    parts.strategy.agree_on_gradients(parts)  # sync point where the strategy needs one
    parts.precision.step(parts.optimizer)  # may unscale, and skip the step on overflow
    for technique in parts.techniques:
        technique.after_step(model)
    parts.optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def eval_step(parts: StepParts, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[loss_sum, num_correct, num_scored]`` of the task on one batch (FP64, on the device)."""
    if parts.strategy.evaluate is not None:
        return parts.strategy.evaluate(parts, inputs, targets)
    with parts.precision.autocast():
        outputs = logits_of(parts.model(inputs))
    return parts.task.eval_sums(outputs, targets)
