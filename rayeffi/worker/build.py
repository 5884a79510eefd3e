"""One build of a worker's training parts, for every execution model.

The Ray Train loop (``worker/loop.py``) and the parameter server's gradient worker
(``param_server/worker.py``) both call :func:`build_worker`; the shards take their
initial weights from :func:`initial_model`, so every replica starts from the same ones.
The slots are entered in a fixed order (:func:`assemble`): the precision policy casts the
model, the strategy places and wraps it, the optimizer is made and handed to the policy,
then the techniques set up in list order (they are torn down in reverse).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

from rayeffi.errors import UserError
from rayeffi.data.info import DatasetInfo
from rayeffi.models import build_model
from rayeffi.models.checkpointing import checkpoint_blocks
from rayeffi.models.compiled import compile_model
from rayeffi.parallel.base import Strategy
from rayeffi.techniques import build_techniques
from rayeffi.precision import build_precision
from rayeffi.techniques.base import Technique
from rayeffi.task import CLASSIFICATION, Task, build_task
from rayeffi.precision import Precision
from rayeffi.worker.optim import build_optimizer, build_scheduler, steps_per_epoch
from rayeffi.worker.step import StepParts
from rayeffi.weights import load_weights, read_weights


def initial_model(stage, info: DatasetInfo, init_checkpoint: str | None) -> nn.Module:
    """The model at the stage's seed (identical on every rank), with ``init_from``'s weights if any
    (``init_checkpoint``: the file or folder it names, loaded with its ``prefix`` and ``strict``)."""
    torch.manual_seed(stage.seed)
    model = build_model(stage.model, info)
    if init_checkpoint:
        options = stage.init_from
        # the driver checked the match and printed what strict: false skips; here it only loads
        load_weights(model, read_weights(init_checkpoint), prefix=options.prefix, strict=options.strict,
                     source=f"weights {init_checkpoint}")
    return model


def apply_speed_options(stage, model: nn.Module, techniques: list[Technique]) -> None:
    """The stage's ``activation_checkpointing`` (the model's blocks) and ``compile`` (the model
    and every technique's frozen modules), in place, before the strategy wraps the model: DDP
    then wraps the compiled module, and a checkpointed block is compiled with its recomputation."""
    if stage.activation_checkpointing is not None:
        checkpoint_blocks(model, stage.activation_checkpointing.every)
    if stage.compile is not None:
        for module in [model, *(m for technique in techniques for m in technique.inference_modules())]:
            compile_model(module, stage.compile.mode, stage.compile.fullgraph)


def assemble(
    model: nn.Module,
    strategy: Strategy,
    precision: Precision,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    techniques: list[Technique] = (),
    task: Task = CLASSIFICATION,
) -> StepParts:
    """The step's parts, with every slot set up in order."""
    if strategy.forward_backward is not None:  # a pipeline runs the task loss itself, in its last stage
        adding = [t.name for t in techniques if type(t).loss is not Technique.loss]
        if adding:
            raise UserError(f"parallel.strategy {strategy.name} runs its own loss and cannot add the loss term of "
                            f"technique {adding[0]}: use parallel.strategy=data_parallel for this stage")
    model, optimizer = strategy.setup(model, precision, make_optimizer)  # the strategy owns the precision
    for technique in techniques:  # entered in list order, torn down in reverse
        technique.task = task
        technique.setup(strategy.unwrap(model), optimizer)
    return StepParts(model, optimizer, strategy, list(techniques), task)


def build_worker(
    stage,
    info: DatasetInfo,
    strategy: Strategy,
    init_checkpoint: str | None = None,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
) -> tuple[StepParts, torch.optim.lr_scheduler.LRScheduler]:
    """A worker's step parts and its learning-rate schedule (lr x every technique's factor); a
    per-step schedule is also the parts' ``scheduler``, which ``finish_step`` steps."""
    model = initial_model(stage, info, init_checkpoint)
    techniques = build_techniques(stage, info)
    apply_speed_options(stage, model, techniques)
    make_optimizer = make_optimizer or partial(build_optimizer, stage.optimizer)
    parts = assemble(model, strategy, build_precision(stage.precision), make_optimizer, techniques,
                     build_task(stage.task))
    config = stage.optimizer
    steps = steps_per_epoch(info.num_train, stage.data_layout, stage.scaling.num_workers)
    scheduler = build_scheduler(config, parts.optimizer, stage.total_epochs, techniques, steps)
    parts.max_grad_norm, parts.accumulate_steps = config.max_grad_norm, config.accumulate_steps
    parts.scheduler = scheduler if config.schedule.per_step else None
    return parts, scheduler
