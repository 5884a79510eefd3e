"""The training step. Read this file first.

One step = one parallel strategy (which owns the precision policy) x an ordered list of
techniques. The order below is the contract every strategy, policy and technique is
written against:

    forward_backward         the only part a strategy may replace (a pipeline's schedule);
                             once per micro-batch with ``accumulate_steps`` > 1:
        forward + task loss      under the precision policy's autocast
        technique losses         in list order (e.g. distillation adds its KD term)
        backward                 the policy may scale the loss; DDP all-reduces here
                                 (on the last micro-batch only: the others run under no_sync)
    finish_step              shared by every strategy, once per optimizer step:
        after_backward           in list order (e.g. mask the gradients of pruned weights)
        agree_on_gradients       the strategy makes every rank decide alike (pipeline overflow)
        clip_gradients           unscaled first; the global norm, clipped unless non-finite
        optimizer step           the policy may unscale, and skip the step on overflow
        after_step               in list order (e.g. re-apply masks to the weights)
        zero_grad
        per-step lr schedule     where the recipe asks for one
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from rayeffi.models.inputs import call_model
from rayeffi.parallel.base import Strategy
from rayeffi.task import CLASSIFICATION, Task, logits_of
from rayeffi.techniques.base import Technique
from rayeffi.precision import Precision


@dataclass
class StepParts:
    """Everything a step touches; built once per stage (``worker/build.py``)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    strategy: Strategy
    techniques: list[Technique] = field(default_factory=list)
    task: Task = CLASSIFICATION
    """What the model predicts and how it is scored (``task.py``)."""
    max_grad_norm: float | None = None
    """Clip the global gradient norm to this before each optimizer step (None: no clipping)."""
    accumulate_steps: int = 1
    """Micro-batches per optimizer step: ``train_step`` splits its rows into this many."""
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    """A per-step learning-rate schedule, stepped after every optimizer step (None: the loop
    steps its schedule once per epoch)."""
    grad_norms: list[torch.Tensor] = field(default_factory=list)
    """The pre-clip gradient norm of every step since the loop last read them (on the device)."""

    @property
    def precision(self) -> Precision:
        return self.strategy.precision  # the strategy owns the precision policy


def train_step(
    parts: StepParts, inputs: torch.Tensor, targets: torch.Tensor, extras: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """One optimizer step on this worker's share of the global batch; returns the loss.

    ``extras``: the batch's columns beyond features and labels (e.g. cached teacher logits, and
    the model's named inputs ``input.NAME``: ``models/inputs.py``).
    With ``accumulate_steps`` k > 1 the rows are split into k micro-batches; each one's loss
    is weighted by its share of the rows, so the summed gradients are the whole batch's mean
    gradient, and only the last backward all-reduces (DDP's ``no_sync`` on the others).
    """
    extras = extras or {}
    if parts.accumulate_steps == 1:
        loss = (parts.strategy.forward_backward or forward_backward)(parts, inputs, targets, extras)
    else:  # strategies with a forward_backward of their own are refused in recipe/compat.py
        loss = torch.zeros((), device=targets.device)
        for index, (micro_inputs, micro_targets, micro_extras) in enumerate(
                micro_batches(inputs, targets, extras, parts.accumulate_steps)):
            share = len(micro_targets) / len(targets)
            last = index == parts.accumulate_steps - 1
            with contextlib.nullcontext() if last else parts.strategy.no_sync(parts.model):  # no all-reduce
                loss += share * forward_backward(parts, micro_inputs, micro_targets, micro_extras, share).float()
    finish_step(parts)
    return loss


def micro_batches(inputs: torch.Tensor, targets: torch.Tensor, extras: dict[str, torch.Tensor], count: int):
    """``count`` consecutive slices of the rows (the last ones smaller where they do not divide)."""
    columns = {name: column.tensor_split(count) for name, column in extras.items()}
    for index, (micro_inputs, micro_targets) in enumerate(zip(inputs.tensor_split(count), targets.tensor_split(count))):
        yield micro_inputs, micro_targets, {name: pieces[index] for name, pieces in columns.items()}


def forward_backward(parts: StepParts, inputs, targets, extras: dict[str, torch.Tensor],
                     share: float = 1.0) -> torch.Tensor:
    """Forward, loss and backward of one (micro-)batch; its gradients are ``share`` x the loss's."""
    model, precision, task = parts.model, parts.precision, parts.task
    with precision.autocast():
        # the named inputs its forward takes (attention_mask, ...); a tensor, or an HF ModelOutput's logits
        outputs = logits_of(call_model(model, inputs, extras))
        # per-token tasks: the global batch's real tokens decide the mean (one all-reduce of a scalar)
        mean_count = parts.strategy.mean_count(task.count(targets)) if task.per_token else None
        loss = task.loss(outputs, targets, mean_count)  # FP32 reduction whatever dtype the forward ran in
        loss = technique_losses(parts.techniques, loss, outputs, inputs, targets, extras)
    precision.backward(loss * share if share != 1.0 else loss)  # DDP all-reduces during backward: sync point
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
    clip_gradients(parts)
    parts.precision.step(parts.optimizer)  # may unscale, and skip the step on overflow
    for technique in parts.techniques:
        technique.after_step(model)
    parts.optimizer.zero_grad(set_to_none=True)
    if parts.scheduler is not None:  # a per-step schedule counts every step, skipped ones too
        parts.scheduler.step()


def clip_gradients(parts: StepParts) -> None:
    """Scale the optimizer's gradients so their global L2 norm is at most ``max_grad_norm``
    (``torch.nn.utils.clip_grad_norm_``'s rule), and keep the pre-clip norm for ``grad_norm``.

    The policy unscales first (fp16: divides by the loss scale; fp16-master: into the FP32
    masters), so the norm is the true one. A non-finite norm (an fp16 overflow) leaves the
    gradients as they are, for the policy to skip the step: clipping would turn inf into
    finite garbage. The norm is the whole model's (``Strategy.global_grad_norm``: data
    parallel's gradients are all-reduced already; a pipeline adds its stages' squares;
    intra-layer splits are refused in ``recipe/compat.py``).
    No host sync: the clip factor is computed on the device.
    """
    if parts.max_grad_norm is None:
        return
    parts.precision.unscale_gradients(parts.optimizer)
    grads = [p.grad for group in parts.optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = parts.strategy.global_grad_norm(torch.nn.utils.get_total_norm(grads))
    finite = torch.isfinite(norm)
    factor = torch.where(finite, (parts.max_grad_norm / (norm + 1e-6)).clamp(max=1.0), 1.0)
    for grad in grads:
        grad.mul_(factor.to(grad.device))
    parts.grad_norms.append(torch.where(finite, norm, torch.nan).detach())


@torch.no_grad()
def eval_step(parts: StepParts, inputs: torch.Tensor, targets: torch.Tensor,
              extras: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``[loss_sum, num_correct, num_scored]`` of the task on one batch (FP64, on the device);
    ``extras``: the batch's named inputs (``input.NAME``)."""
    if parts.strategy.evaluate is not None:  # one tensor between units: named inputs are refused there
        return parts.strategy.evaluate(parts, inputs, targets)
    with parts.precision.autocast():
        outputs = logits_of(call_model(parts.model, inputs, extras))
    return parts.task.eval_sums(outputs, targets)
