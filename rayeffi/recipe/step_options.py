"""The step's options in a recipe: the optimizer and its learning-rate schedule (clipping,
accumulation included) and early stopping. Pure configuration; the worker builds them
(``worker/optim.py``, ``worker/early_stop.py``). See docs/step_options.md.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from rayeffi.recipe.sections import TASK_METRICS, Section


def watchable_metrics(task_name: str) -> tuple[str, ...]:
    """The epoch metrics of a task that early stopping may watch, headline first: its
    validation figures (``TASK_METRICS``), then the losses."""
    return (*(name for name in TASK_METRICS[task_name] if name.startswith("val_")), "val_loss", "train_loss")


class ScheduleConfig(Section):
    """Learning-rate schedule: stepped once per epoch, or after every optimizer step when
    ``warmup_steps`` is given (``worker/optim.py`` has the formulas; ``docs/step_options.md``)."""

    name: Literal["constant", "cosine", "linear", "step"] = "constant"
    """``constant``; ``cosine`` (half a cosine down to ``lr * min_lr_factor``); ``linear`` (a
    straight line down to ``lr * min_lr_factor``); ``step`` (x ``gamma`` every ``step_size``
    epochs; per-epoch schedules only)."""
    warmup_epochs: int = Field(0, ge=0)
    """Per-epoch schedule: linear warm-up from lr/10 over this many epochs (before the schedule)."""
    warmup_steps: int | None = Field(None, ge=0)
    """Given (even 0): the schedule steps after every optimizer step, over ``epochs x steps
    per epoch`` steps, starting with a linear warm-up: step ``i < warmup_steps`` runs at
    ``lr * (i + 1) / warmup_steps``. It must be shorter than the run (checked before Ray starts)."""
    step_size: PositiveInt = 10
    """``step``: multiply the lr by ``gamma`` every ``step_size`` epochs."""
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    min_lr_factor: float = Field(0.0, ge=0.0, le=1.0)
    """``cosine``, ``linear``: the lr decays to ``lr * min_lr_factor``."""

    @model_validator(mode="after")
    def _one_unit(self) -> ScheduleConfig:
        if self.per_step and self.warmup_epochs:
            raise ValueError("optimizer.schedule: give warmup_steps (a per-step schedule) or warmup_epochs "
                             "(a per-epoch one), not both")
        if self.per_step and self.name == "step":
            raise ValueError("optimizer.schedule 'step' decays every step_size epochs and has no per-step form: "
                             "use name cosine or linear with warmup_steps, or warmup_epochs with step")
        return self

    @property
    def per_step(self) -> bool:
        """The scheduler steps after every optimizer step (``finish_step``), not once per epoch."""
        return self.warmup_steps is not None


BUILTIN_OPTIMIZERS = ("sgd", "adam", "adamw")
_OPTIMIZER_PATH = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*|\.[A-Za-z_]\w*)$")


class OptimizerConfig(Section):
    """Optimizer, its learning-rate schedule, and what happens to the gradients before a step."""

    name: str = "sgd"
    """``sgd``, ``adam``, ``adamw``, or any ``torch.optim.Optimizer`` subclass by import
    path: ``torch.optim.RMSprop`` or ``package.module:Class`` (built with the parameters,
    ``lr``, ``weight_decay`` when above 0, and ``kwargs``; checked before Ray starts)."""
    lr: PositiveFloat = 0.1
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    """SGD only (an optimizer by import path takes its own in ``kwargs``)."""
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0)
    kwargs: dict[str, Any] = {}
    """Further keyword arguments of the optimizer class, e.g. ``{betas: [0.9, 0.95]}``."""
    max_grad_norm: PositiveFloat | None = None
    """Clip the global gradient norm to this before each optimizer step (after the precision
    policy unscales; a step skipped for overflow is left alone). The pre-clip norm's epoch
    mean is reported as ``grad_norm``."""
    accumulate_steps: int = 1
    """Split each step's rows into this many micro-batches, backward each (DDP all-reduces
    the last only), and make one optimizer step: the step of the whole batch with the
    activations of a part. It must divide the rows a worker reads a step."""
    schedule: ScheduleConfig = ScheduleConfig()

    @model_validator(mode="after")
    def _sgd_only_options(self) -> OptimizerConfig:
        if self.name not in BUILTIN_OPTIMIZERS and not _OPTIMIZER_PATH.match(self.name):
            raise ValueError(f"optimizer.name {self.name!r} is neither a built-in optimizer "
                             f"({', '.join(BUILTIN_OPTIMIZERS)}) nor an import path such as torch.optim.RMSprop "
                             "or package.module:Class")
        if self.name != "sgd" and (self.momentum or self.nesterov):
            raise ValueError(f"optimizer.momentum and nesterov are SGD options, not {self.name!r}: "
                             "give the optimizer's own in optimizer.kwargs")
        if self.nesterov and self.momentum == 0:
            raise ValueError("optimizer.nesterov needs optimizer.momentum > 0")
        if self.accumulate_steps < 1:
            raise ValueError(f"optimizer.accumulate_steps must be 1 (no accumulation) or more, "
                             f"got {self.accumulate_steps}")
        return self


class EarlyStopConfig(Section):
    """Stop the stage when its metric has not improved for ``patience`` epochs."""

    patience: PositiveInt
    """Epochs without an improvement of more than ``min_delta`` before the stage stops."""
    min_delta: float = Field(0.0, ge=0.0)
    """The smallest change that counts as an improvement."""
    metric: str | None = None
    """An epoch metric of the task (:func:`watchable_metrics`; default its headline: ``val_accuracy``,
    ``val_token_accuracy``, ``val_perplexity``, ``val_rmse``). Accuracies should grow, the rest shrink."""

    def watched(self, task_name: str) -> str:
        return self.metric or watchable_metrics(task_name)[0]

    def greater_is_better(self, task_name: str) -> bool:
        return self.watched(task_name).endswith("accuracy")
