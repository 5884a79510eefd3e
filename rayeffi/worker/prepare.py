"""rayeffi's techniques inside your own training loop: :func:`prepare`.

A user who already has a loop (a ``train_loop_per_worker`` for Ray Train's
``TorchTrainer``, or a plain torch script) keeps it, its batches and its
``ray.train.report``; :func:`prepare` wraps the model and the optimizer in one precision
policy, data parallelism over the process group Ray Train set up, and any techniques
(DSD, distillation), the way Accelerate's ``prepare`` does::

    fx = rayeffi.prepare(model, optimizer, precision="bf16", techniques=[
        rayeffi.DsdConfig(rounds=[0.5], dense_epochs=1, sparse_epochs=1, redense_epochs=1),
        rayeffi.DistillConfig(teachers=[teacher], temperature=4.0, alpha=0.7),
    ])
    for epoch in range(fx.epochs):
        fx.epoch_start(epoch)                    # DSD chooses masks; re-dense sets LR/10
        for x, y in batches:
            with fx.autocast():
                logits = fx.model(x)
                loss = fx.loss(F.cross_entropy(logits.float(), y), logits, x, y)  # + KD term
            fx.backward(loss)                    # loss scaling; DDP all-reduces here
            fx.step()                            # masks, unscale, optimizer, masks again
        ray.train.report(fx.epoch_end(val_accuracy=...))

It is the same implementation as a recipe's stage: :func:`~rayeffi.worker.build.assemble`
builds the same :class:`~rayeffi.worker.step.StepParts`, ``backward`` is the policy's,
``step`` is :func:`~rayeffi.worker.step.finish_step` and ``loss`` is
:func:`~rayeffi.worker.step.technique_losses`. A test holds the two to parity.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from rayeffi.errors import UserError
from rayeffi.parallel.data_parallel import DataParallel
from rayeffi.task import TASKS, Task, logits_of
from rayeffi.techniques import TECHNIQUES
from rayeffi.precision import build_precision
from rayeffi.techniques.base import Technique
from rayeffi.worker.build import assemble
from rayeffi.worker.epoch import grad_norm_metrics
from rayeffi.worker.step import StepParts, finish_step, technique_losses

OptimizerArg = torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def prepare(
    model: nn.Module,
    optimizer: OptimizerArg,
    *,
    precision: Any = "fp32",
    techniques: Sequence[Any] = (),
    task: str | Task = "classification",
    max_grad_norm: float | None = None,
    accumulate_steps: int = 1,
    num_features: int | None = None,
) -> Prepared:
    """Wrap ``model`` and ``optimizer`` for your own loop; see the module docstring.

    ``optimizer``: an optimizer over ``model``'s parameters, or a factory ``params ->
    optimizer``. ``precision``: ``fp32 | bf16 | fp16 | fp16-master`` or a
    ``rayeffi.recipe.PrecisionConfig`` (loss-scaling options). ``techniques``: in the
    order the step applies them, each a config (``rayeffi.DsdConfig``,
    ``rayeffi.DistillConfig``, whose ``teachers`` may be trained modules), a mapping with
    a ``name`` (as in a recipe's ``techniques:`` list) or a :class:`Technique`.
    ``task``: how technique losses read the logits (``language_modeling``: per-token KD).
    ``max_grad_norm``: clip the global gradient norm before each optimizer step (after the
    policy unscales; the norm is reported as ``grad_norm``). ``accumulate_steps`` k: ``step``
    acts on every k-th call, ``backward`` divides the loss by k, and ``with fx.accumulate():``
    around the forward and backward skips DDP's all-reduce on the inner k-1.
    ``num_features``: the input width, needed only by distillation hints (a probe forward).

    The model is used on the device its parameters are on (place it first, e.g. on
    ``ray.train.torch.get_device()``). Inside a Ray Train worker group (a torch process
    group is initialised) the model is wrapped in DDP.
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"prepare: model must be a torch.nn.Module, got {type(model).__name__}")
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise UserError("prepare: the model has no parameters to train")
    task = _task(task)
    configs = [_technique(item, index, num_features) for index, item in enumerate(techniques)]
    names = [technique.name for technique in configs]
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise UserError(f"prepare: max_grad_norm must be a positive number, got {max_grad_norm!r}")
    if not isinstance(accumulate_steps, int) or accumulate_steps < 1:
        raise UserError(f"prepare: accumulate_steps must be an integer >= 1, got {accumulate_steps!r}")
    if len(set(names)) != len(names):
        raise UserError(f"prepare: techniques {names} name one twice: each technique appears once")
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    strategy = DataParallel(rank, world_size, parameter.device)
    parts = assemble(model, strategy, _precision(precision), _make_optimizer(optimizer), configs, task)
    parts.max_grad_norm = max_grad_norm
    return Prepared(parts, accumulate_steps)


class Prepared:
    """The step's parts for your own loop: ``model``, ``autocast``, ``loss``, ``backward``, ``step``,
    ``epoch_start``, ``epoch_end``, ``state_dict`` (see :func:`prepare`)."""

    def __init__(self, parts: StepParts, accumulate_steps: int = 1):
        self.parts = parts
        self.accumulate_steps = accumulate_steps
        self._calls = 0  # calls of step(): every accumulate_steps-th one steps
        self.epoch = -1
        self.history: list[dict[str, Any]] = []
        self._lr_factor = 1.0

    @property
    def model(self) -> nn.Module:
        """The model to call in the loop (DDP-wrapped in a worker group)."""
        return self.parts.model

    @property
    def module(self) -> nn.Module:
        """The plain model behind any wrapper: its ``state_dict`` is the checkpoint's."""
        return self.parts.strategy.unwrap(self.parts.model)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.parts.optimizer

    @property
    def techniques(self) -> list[Technique]:
        return self.parts.techniques

    @property
    def epochs(self) -> int | None:
        """Epochs a technique fixes (DSD: the sum of its phases), or None."""
        fixed = [t.config.fixed_epochs() for t in self.techniques if hasattr(getattr(t, "config", None), "fixed_epochs")]
        fixed = [value for value in fixed if value is not None]
        return max(fixed) if fixed else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision policy's autocast: run the forward and the loss inside it."""
        return self.parts.precision.autocast()

    def loss(self, loss: torch.Tensor, outputs: Any, inputs: torch.Tensor, targets: torch.Tensor,
             extras: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Your task loss with every technique's term added in list order (distillation:
        ``alpha * soft + (1 - alpha) * loss``, hints). ``outputs``: what the model returned."""
        return technique_losses(self.techniques, loss, logits_of(outputs), inputs, targets, dict(extras or {}))

    def accumulate(self) -> contextlib.AbstractContextManager:
        """Around the forward and backward of a micro-batch: DDP skips its all-reduce unless the
        next :meth:`step` is the one that steps (``accumulate_steps``)."""
        steps_next = (self._calls + 1) % self.accumulate_steps == 0
        return contextlib.nullcontext() if steps_next else self.parts.strategy.no_sync(self.parts.model)

    def backward(self, loss: torch.Tensor) -> None:
        """The policy's backward (fp16: the scaled loss; ``accumulate_steps`` k: loss / k); DDP
        all-reduces gradients here."""
        self.parts.precision.backward(loss / self.accumulate_steps if self.accumulate_steps > 1 else loss)

    def step(self) -> bool:
        """The rest of the step, as a recipe's: techniques' ``after_backward`` (DSD masks the
        gradients), clipping, unscale and the optimizer step (skipped on an fp16 overflow),
        ``after_step`` (masks re-applied), ``zero_grad``. With ``accumulate_steps`` k only every
        k-th call steps (it returns True); the others keep the gradients."""
        self._calls += 1
        if self._calls % self.accumulate_steps:
            return False
        finish_step(self.parts)
        return True

    def epoch_start(self, epoch: int) -> None:
        """Before epoch ``epoch`` (0-based): DSD enters its phase (masks chosen once per sparse
        phase), and the learning rate takes the techniques' factor (re-dense: LR/10), applied
        relative to the last epoch's so your own scheduler's changes stay."""
        self.epoch = epoch
        self.parts.model.train()
        for technique in self.techniques:
            technique.on_epoch_start(epoch, self.module, self.optimizer)
        factor = 1.0
        for technique in self.techniques:
            factor *= technique.lr_factor(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] *= factor / self._lr_factor
        self._lr_factor = factor

    def epoch_end(self, **metrics: Any) -> dict[str, Any]:
        """This epoch's metrics: yours (``train_loss=..., val_loss=...``), the epoch, the
        learning rate, the techniques' (DSD sparsity, KD losses) and the policy's (loss
        scale). Pass them to ``ray.train.report``; they make :meth:`summary`'s history."""
        metrics = {"epoch": self.epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], **metrics}
        for technique in self.techniques:
            metrics.update(technique.metrics())
        metrics.update(self.parts.precision.metrics())
        metrics.update(grad_norm_metrics(self.parts))  # where it clips: the epoch's mean pre-clip norm
        self.history.append(metrics)
        return metrics

    def summary(self) -> dict[str, Any]:
        """Each technique's summary as a recipe's ``summary.json`` has it (DSD: its rounds with
        target and measured sparsity per phase), from the epochs :meth:`epoch_end` saw."""
        history = [{"train_loss": None, "val_loss": None, **row} for row in self.history]
        summary: dict[str, Any] = {}
        for technique in self.techniques:
            plugin = TECHNIQUES.get(technique.name)
            if plugin is not None and history:
                summary.update(plugin.summarise(technique.config, history))
        return summary

    def sparse_state(self) -> dict[str, Any]:
        """DSD's last sparse phase: ``{"model": state_dict, "masks": {name: bool tensor}, ...}``
        (what ``rayeffi export`` writes), or ``{}`` without DSD or before a sparse phase."""
        for technique in self.techniques:
            if hasattr(technique, "final_sparse_state"):
                return technique.final_sparse_state()
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, precision and technique states (DSD masks) and the epoch; every rank calls it."""
        return {**self.parts.strategy.training_state(self.parts), "epoch": self.epoch, "lr_factor": self._lr_factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.parts.strategy.load_training_state(self.parts, state)
        self.epoch, self._lr_factor = state["epoch"], state["lr_factor"]

    def teardown(self) -> None:
        """Remove the techniques' hooks (reverse order), as a recipe's stage does at its end."""
        for technique in reversed(self.techniques):
            technique.teardown()
        self.parts.strategy.teardown()

    def __enter__(self) -> Prepared:
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()


def _task(task: str | Task) -> Task:
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise UserError(f"prepare: task {task!r} is not one of {', '.join(TASKS)}")
    return TASKS[task]()


def _precision(precision: Any):
    from rayeffi.precision import PRECISIONS

    if isinstance(precision, str) and precision not in PRECISIONS:
        raise UserError(f"prepare: precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return build_precision(precision)


def _make_optimizer(optimizer: OptimizerArg) -> Callable[[nn.Module], torch.optim.Optimizer]:
    if isinstance(optimizer, torch.optim.Optimizer):
        return lambda model: optimizer  # over the same Parameter objects: placing and casting keep them
    if callable(optimizer):
        return lambda model: optimizer(model.parameters())
    raise UserError(f"prepare: optimizer must be a torch.optim.Optimizer or a factory params -> optimizer, "
                    f"got {type(optimizer).__name__}")


def _technique(item: Any, index: int, num_features: int | None) -> Technique:
    """A Technique from a config object, a ``{name: ...}`` mapping or a Technique."""
    if isinstance(item, Technique):
        return item
    config = item
    if isinstance(item, Mapping):
        config = _validated_config(dict(item), index)
    name = getattr(config, "name", None)
    if name not in TECHNIQUES:
        raise UserError(f"prepare: techniques[{index}] is {type(item).__name__}, not a technique config: give "
                        f"rayeffi.DsdConfig(...), rayeffi.DistillConfig(...) or {{'name': one of {sorted(TECHNIQUES)}}}")
    if name == "distill" and any(teacher.module is None for teacher in config.teachers):
        raise UserError(f"prepare: techniques[{index}] (distill): pass the trained teacher modules themselves, "
                        "DistillConfig(teachers=[teacher_model], ...)")
    return TECHNIQUES[name].build(config, _Info(num_features or 0))


def _validated_config(raw: dict[str, Any], index: int):
    from pydantic import ValidationError

    from rayeffi.recipe.techniques import TECHNIQUE_CONFIGS

    name = raw.get("name")
    if name not in TECHNIQUE_CONFIGS:
        raise UserError(f"prepare: techniques[{index}].name {name!r} is not one of {sorted(TECHNIQUE_CONFIGS)}")
    try:
        return TECHNIQUE_CONFIGS[name].model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        raise UserError(f"prepare: techniques[{index}] ({name}).{key}: {error['msg']}") from None


class _Info:
    """The dataset shape a technique's build reads (``DatasetInfo``'s ``num_features``)."""

    def __init__(self, num_features: int):
        self.num_features = num_features
