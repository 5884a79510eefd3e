"""The technique slot of the step: any number, in order (distillation, sparsity masks, ...).

Techniques are entered in list order and torn down in reverse. Each hook has a no-op
default, so a technique overrides only the points where it acts. A technique's maths
lives in pure functions beside it; this adapter only plugs them into the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from rayeffi.task import CLASSIFICATION, Task


class Technique:
    """A no-op technique: the default for every hook."""

    name = "technique"
    task: Task = CLASSIFICATION
    """The stage's task (``task.py``), set by ``worker/build.py: assemble`` before :meth:`setup`."""

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Once, after model, strategy and optimizer exist (e.g. load a teacher).

        ``model`` is the plain module, unwrapped from any strategy wrapper (DDP); its
        parameters are the ones the optimizer updates.
        """

    def lr_factor(self, epoch: int) -> float:
        """Multiplier on the scheduled learning rate for ``epoch`` (e.g. DSD's re-dense LR/10)."""
        return 1.0

    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Before each epoch (e.g. switch a DSD phase, choose masks)."""

    def loss(
        self,
        loss: torch.Tensor,
        outputs: torch.Tensor,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        extras: dict[str, torch.Tensor],
    ):
        """Return the loss to optimise, given the task loss (e.g. add a KD term).

        ``extras`` holds the batch's other columns (e.g. cached teacher logits).
        """
        return loss

    def after_backward(self, model: nn.Module) -> None:
        """Gradients are final here (e.g. mask gradients of pruned weights)."""

    def after_step(self, model: nn.Module) -> None:
        """After the optimizer step (e.g. re-apply masks so pruned weights stay zero)."""

    def metrics(self) -> dict[str, float]:
        """Added to each epoch's metrics."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def teardown(self) -> None:
        """Undo :meth:`setup` (remove hooks); called in reverse list order."""

    def inference_modules(self) -> list[nn.Module]:
        """Modules the technique runs forward only, frozen in eval mode (distillation's teachers):
        the stage's ``compile`` compiles them too, once, before :meth:`setup`."""
        return []


@dataclass(frozen=True)
class DriverInputs:
    """What a technique's driver-side ``prepare`` may use (no tensors, no Ray Train)."""

    stage: Any
    """The stage config (``rayeffi.recipe.StageConfig``)."""
    checkpoints: dict[str, str]
    """Checkpoint paths of the stages run so far, by stage name."""
    source: Any
    """The stage's checked data source (``rayeffi.data.DataSource``)."""
    stage_dir: Path
    """``OUT/stages/NAME``: where a technique may write what it prepares (a cache)."""
    in_process: bool = False
    """The stage runs in the driver's process without Ray (``stages/local_run.py``): prepare
    there too (pyarrow, not Ray Data)."""


@dataclass(frozen=True)
class Prepared:
    """A technique's config and data source after ``prepare``, and what it adds to the summary."""

    config: Any
    source: Any
    summary: dict[str, Any] = field(default_factory=dict)


def _unchanged(config: Any, inputs: DriverInputs) -> Prepared:
    return Prepared(config, inputs.source)


@dataclass(frozen=True)
class TechniquePlugin:
    """Everything rayeffi needs of one technique; registered once in ``techniques.TECHNIQUES``.

    Its config class is ``rayeffi.recipe.techniques.TECHNIQUE_CONFIGS[name]``.
    """

    build: Callable[[Any, Any], Technique]
    """Worker side: ``(config, dataset info) -> Technique`` for the step."""
    check: Callable[[Any, Any, Any, str], None] = lambda config, stage, info, key: None
    """Driver, before Ray starts: ``(config, stage, dataset info, recipe key)``; raises UserError."""
    prepare: Callable[[Any, DriverInputs], Prepared] = _unchanged
    """Driver, before the stage's run (and before its Tune trials): resolve inputs, write caches."""
    summarise: Callable[[Any, list[dict[str, Any]]], dict[str, Any]] = lambda config, history: {}
    """Driver, after the run: entries for the stage's ``summary.json`` from the epoch history."""
