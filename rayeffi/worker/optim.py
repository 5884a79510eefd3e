"""Optimizer and per-epoch learning-rate schedule from a recipe's ``optimizer`` section."""

from __future__ import annotations

import math

import torch
from torch import nn

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rayeffi.recipe.sections import OptimizerConfig  # pydantic: annotations only


def build_optimizer(config: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.name == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay
        )
    optimizer_class = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
    return optimizer_class(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(config: OptimizerConfig, epoch: int, num_epochs: int) -> float:
    """Multiplier of ``lr`` for ``epoch`` (0-based): linear warm-up, then the schedule."""
    schedule = config.schedule
    if epoch < schedule.warmup_epochs:
        return 0.1 + 0.9 * epoch / schedule.warmup_epochs
    after_warmup = epoch - schedule.warmup_epochs
    if schedule.name == "step":
        return schedule.gamma ** (after_warmup // schedule.step_size)
    if schedule.name == "cosine":
        span = max(num_epochs - schedule.warmup_epochs, 1)
        cosine = 0.5 * (1 + math.cos(math.pi * after_warmup / span))
        return schedule.min_lr_factor + (1 - schedule.min_lr_factor) * cosine
    return 1.0


def build_scheduler(config: OptimizerConfig, optimizer, num_epochs: int, techniques=()) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch lr = ``lr * schedule factor * each technique's lr_factor`` (e.g. DSD's re-dense LR/10)."""

    def factor(epoch: int) -> float:
        value = lr_factor(config, epoch, num_epochs)
        for technique in techniques:
            value *= technique.lr_factor(epoch)
        return value

    # LambdaLR's state_dict holds only counters (the function is rebuilt from the recipe),
    # so checkpoints stay loadable with weights_only=True
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
