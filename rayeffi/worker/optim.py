"""Optimizer and learning-rate schedule from a recipe's ``optimizer`` section.

The schedule steps once per epoch, or after every optimizer step when
``schedule.warmup_steps`` is given (``finish_step`` steps it then); either way its
``LambdaLR`` holds only counters, so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import importlib
import math

import torch
from torch import nn

from typing import TYPE_CHECKING

from rayeffi.errors import UserError

if TYPE_CHECKING:
    from rayeffi.recipe.step_options import OptimizerConfig, ScheduleConfig  # pydantic: annotations only

BUILTIN_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """A built-in name, ``torch.optim.RMSprop`` or ``package.module:Class`` -> the class (ImportError,
    AttributeError or TypeError when the path does not name an optimizer)."""
    if name in BUILTIN_OPTIMIZERS:
        return BUILTIN_OPTIMIZERS[name]
    module_name, _, class_name = name.partition(":") if ":" in name else name.rpartition(".")
    found = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(found, type) and issubclass(found, torch.optim.Optimizer)):
        raise TypeError(f"{name} is not a torch.optim.Optimizer subclass")
    return found


def optimizer_kwargs(config: OptimizerConfig) -> dict:
    """The keyword arguments besides the parameters: ``lr``, SGD's momentum, ``weight_decay``
    (an optimizer by path gets it only when above 0: not every optimizer has one), ``kwargs``."""
    kwargs = {"lr": config.lr}
    if config.name == "sgd":
        kwargs.update(momentum=config.momentum, nesterov=config.nesterov)
    if config.name in BUILTIN_OPTIMIZERS or config.weight_decay:
        kwargs["weight_decay"] = config.weight_decay
    return {**kwargs, **config.kwargs}


def build_optimizer(config: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    return optimizer_class(config.name)(model.parameters(), **optimizer_kwargs(config))


def check_optimizer(config: OptimizerConfig, key: str) -> None:
    """Driver side, before Ray starts: the class imports and is built on a dummy parameter
    with the recipe's arguments; else one ``UserError`` naming ``key`` (``stages.S.optimizer``)."""
    try:
        optimizer_class(config.name)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        raise UserError(f"{key}.name: {config.name!r} does not name an optimizer ({exc}): give a built-in "
                        "(sgd, adam, adamw), a torch.optim class such as torch.optim.RMSprop, or "
                        "package.module:Class of a torch.optim.Optimizer subclass") from None
    try:
        build_optimizer(config, nn.Linear(1, 1))
    except (TypeError, ValueError) as exc:
        raise UserError(f"{key}.name: {config.name} refuses the recipe's arguments {optimizer_kwargs(config)} "
                        f"({exc}): fix {key}.kwargs (or weight_decay)") from None


def lr_factor(config: OptimizerConfig, epoch: int, num_epochs: int) -> float:
    """Multiplier of ``lr`` for ``epoch`` (0-based): linear warm-up, then the schedule."""
    schedule = config.schedule
    if epoch < schedule.warmup_epochs:
        return 0.1 + 0.9 * epoch / schedule.warmup_epochs
    after_warmup = epoch - schedule.warmup_epochs
    if schedule.name == "step":
        return schedule.gamma ** (after_warmup // schedule.step_size)
    return _decay(schedule, after_warmup, max(num_epochs - schedule.warmup_epochs, 1))


def step_lr_factor(schedule: ScheduleConfig, step: int, total_steps: int) -> float:
    """Multiplier of ``lr`` for optimizer step ``step`` (0-based) of ``total_steps``: step
    ``i < warmup_steps`` runs at ``(i + 1) / warmup_steps``, then the schedule decays over the
    remaining ``total_steps - warmup_steps`` steps."""
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    return _decay(schedule, step - schedule.warmup_steps, max(total_steps - schedule.warmup_steps, 1))


def _decay(schedule: ScheduleConfig, done: int, span: int) -> float:
    """``constant``: 1; ``cosine`` / ``linear``: from 1 at ``done = 0`` to ``min_lr_factor`` at ``span``."""
    progress = min(done / span, 1.0)
    if schedule.name == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule.name == "linear":
        shape = 1.0 - progress
    else:
        return 1.0
    return schedule.min_lr_factor + (1 - schedule.min_lr_factor) * shape


def build_scheduler(config: OptimizerConfig, optimizer, num_epochs: int, techniques=(),
                    steps_per_epoch: int = 1) -> torch.optim.lr_scheduler.LambdaLR:
    """lr = ``lr * schedule factor * each technique's lr_factor(epoch)`` (e.g. DSD's re-dense LR/10).

    Per epoch, the scheduler's counter is the epoch; per step (``schedule.warmup_steps``), it is
    the optimizer step, and the epoch is ``step // steps_per_epoch``."""
    schedule = config.schedule

    def factor(count: int) -> float:
        if schedule.per_step:
            value, epoch = step_lr_factor(schedule, count, num_epochs * steps_per_epoch), count // steps_per_epoch
        else:
            value, epoch = lr_factor(config, count, num_epochs), count
        for technique in techniques:
            value *= technique.lr_factor(epoch)
        return value

    # LambdaLR's state_dict holds only counters (the function is rebuilt from the recipe),
    # so checkpoints stay loadable with weights_only=True
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_per_epoch(num_rows: int, layout, num_workers: int) -> int:
    """Optimizer steps a worker makes per epoch over ``num_rows`` training rows under the stage's
    ``DataLayout`` (the driver's sharding: ``ShardBatches.steps`` once the shard is read)."""
    rows = num_rows // max(num_workers, 1) if layout.split_across_workers else num_rows  # split(equal=True)
    steps = rows // layout.rows_per_read if layout.drop_last else -(-rows // layout.rows_per_read)
    return max(steps, 1)
