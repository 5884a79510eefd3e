"""The parallel strategy slot of the step: how a model, its batch and its gradients are spread.

Exactly one strategy runs per stage, and it owns the stage's precision policy (Lightning
Fabric's shape): :meth:`Strategy.setup` prepares the model and the optimizer under it. The
interface is small, and every method has a default that is right for a single process:

- building: :meth:`setup` (via :meth:`wrap`), :meth:`unwrap`;
- data: :meth:`local_batch`, the rows this worker computes on (the stage's
  :class:`~rayeffi.recipe.strategy.DataLayout` says what it reads);
- the step: ``forward_backward`` / ``evaluate`` for a strategy that runs them itself (a
  pipeline schedule; None: the step's own), :meth:`agree_on_gradients` before the
  optimizer step;
- metrics: :meth:`all_reduce_sum`, :meth:`all_gather_object`;
- checkpoints: :meth:`training_state` / :meth:`load_training_state`, the whole training
  state (collectives every rank enters).
"""

from __future__ import annotations

import contextlib

from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from rayeffi.precision import FP32, Precision


class Strategy:
    """Single-process behaviour; subclasses override what their parallelism changes."""

    name = "single"
    min_world_size = 1
    """Workers the strategy needs (a pipeline needs one per stage)."""
    forward_backward: Callable | None = None
    """``(parts, inputs, targets, extras) -> loss`` for a strategy that runs forward and
    backward itself (a pipeline's schedule, as torchtitan's ``forward_backward_step``);
    None: ``worker/step.py: forward_backward``."""
    evaluate: Callable | None = None
    """``(parts, inputs, targets) -> [loss_sum, correct, count]`` likewise; None: ``worker/step.py: eval_step``."""

    def __init__(self, world_rank: int = 0, world_size: int = 1, device: torch.device | None = None, config=None,
                 info: Any = None):
        self.world_rank = world_rank
        self.world_size = world_size
        self.device = device or torch.device("cpu")
        self.config = config
        """The stage's ``parallel`` section (its strategy's own config class)."""
        self.info = info
        """The dataset's shape (``DatasetInfo``), for strategies that probe the model."""
        self.precision: Precision = FP32()
        """The stage's precision policy, owned from :meth:`setup` on."""

    @classmethod
    def from_config(cls, config, world_rank: int, world_size: int, device: torch.device, info=None) -> Strategy:
        """Build from the recipe's ``parallel`` section and the dataset's shape."""
        return cls(world_rank, world_size, device, config=config, info=info)

    @property
    def is_rank_zero(self) -> bool:
        return self.world_rank == 0

    # -- building -----------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, precision: Precision,
              make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The model placed and wrapped, and its optimizer, under ``precision`` (owned from here on)."""
        self.precision = precision
        model = self.wrap(precision.prepare_model(model))  # dtype fixed before DDP sizes its buckets
        optimizer = make_optimizer(model)
        precision.setup(model, optimizer)
        return model, optimizer

    def wrap(self, model: nn.Module) -> nn.Module:
        """Place the model and wrap it for this strategy (called once, before the optimizer)."""
        return model.to(self.device)

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The plain module behind any wrapper, for checkpoints and techniques."""
        return model

    # -- data ---------------------------------------------------------------------------------------------
    def local_batch(self, inputs: torch.Tensor, targets: torch.Tensor, extras: dict[str, torch.Tensor]):
        """The rows this worker computes on, from the rows it read (identity: all of them)."""
        return inputs, targets, extras

    # -- the step -----------------------------------------------------------------------------------------
    def agree_on_gradients(self, parts) -> None:
        """Before the optimizer step, after the techniques' ``after_backward``: make every rank
        take the same decision (a pipeline's stages agree on a loss-scale overflow)."""

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """Context for a backward whose gradients are accumulated, not yet synchronised
        (gradient accumulation's inner micro-batches; DDP: ``model.no_sync()``)."""
        return contextlib.nullcontext()

    def global_grad_norm(self, local_norm: torch.Tensor) -> torch.Tensor:
        """The L2 norm of the whole model's gradients from this rank's (clipping): the same here,
        where a rank holds every parameter (data-parallel gradients are all-reduced already)."""
        return local_norm

    @property
    def replicas(self) -> int:
        """Data-parallel replicas whose gradients are averaged (``all_reduce_sum`` adds over them)."""
        return 1

    def mean_count(self, count: torch.Tensor) -> torch.Tensor:
        """The mean of ``count`` over the data-parallel replicas: a per-token loss divides by it
        (``task.py``). One all-reduce of a scalar where there are several replicas."""
        count = count.to(self.device, torch.float32).reshape(1)
        return (self.all_reduce_sum(count) / self.replicas).reshape(())  # sync point (replicas > 1)

    # -- metrics ------------------------------------------------------------------------------------------
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum across data-parallel replicas (metrics, not gradients)."""
        return tensor

    def all_gather_object(self, obj):
        """Every worker's ``obj``, in rank order (a collective when there are several)."""
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    # -- checkpoints --------------------------------------------------------------------------------------
    def training_state(self, parts) -> dict[str, Any]:
        """The whole model's weights, the optimizer, the precision policy's and the techniques'
        states, for a checkpoint (``checkpoint.TRAINING_KEYS``); every rank calls it (it may be a
        collective) and rank 0 writes what it returns."""
        return {
            "model": self.unwrap(parts.model).state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "precision": self.precision.state_dict(),
            "techniques": {technique.name: technique.state_dict() for technique in parts.techniques},
        }

    def load_training_state(self, parts, state: dict[str, Any]) -> None:
        """Continue from :meth:`training_state`'s result (every rank calls it)."""
        self.unwrap(parts.model).load_state_dict(state["model"])
        parts.optimizer.load_state_dict(state["optimizer"])
        load_slot_states(parts, self.precision, state)

    def teardown(self) -> None:
        """Undo :meth:`setup` side effects."""


def load_slot_states(parts, precision: Precision, state: dict[str, Any]) -> None:
    """The precision policy's and the techniques' states (absent entries: fresh state)."""
    precision.load_state_dict(state.get("precision", {}))
    for technique in parts.techniques:
        technique.load_state_dict(state.get("techniques", {}).get(technique.name, {}))
