"""The parallel strategy slot of the step: how a model and its gradients are spread.

Exactly one strategy runs per stage. Every hook has a default that is right for a
single process, so a strategy overrides only what it changes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class Strategy:
    """Single-process behaviour; subclasses override what their parallelism changes."""

    name = "single"
    drop_last = False
    """Skip each epoch's last, partial training batch (a pipeline's micro-batch shapes are fixed)."""
    min_world_size = 1
    """Workers the strategy needs (a pipeline needs one per stage)."""

    def __init__(self, world_rank: int = 0, world_size: int = 1, device: torch.device | None = None, config=None):
        self.world_rank = world_rank
        self.world_size = world_size
        self.device = device or torch.device("cpu")
        self.config = config
        """The stage's ``parallel`` section (its strategy's own config class)."""

    @classmethod
    def from_config(cls, config, world_rank: int, world_size: int, device: torch.device, info=None) -> Strategy:
        """Build from the recipe's ``parallel`` section and the dataset's shape."""
        return cls(world_rank, world_size, device, config=config)

    @property
    def is_rank_zero(self) -> bool:
        return self.world_rank == 0

    def setup_model(self, model: nn.Module) -> nn.Module:
        """Place the model and wrap it for this strategy (called once, before the optimizer)."""
        return model.to(self.device)

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The plain module behind any wrapper, for checkpoints and techniques."""
        return model

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum across workers (metrics, not gradients)."""
        return tensor

    def all_gather_object(self, obj):
        """Every worker's ``obj``, in rank order (a collective when there are several)."""
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def group_batch(self, inputs: torch.Tensor, targets: torch.Tensor, extras: dict[str, torch.Tensor]):
        """The rows this worker computes on, from its own data shard (identity: its shard)."""
        return inputs, targets, extras

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's weights for a checkpoint; every rank calls it (it may be a collective)."""
        return self.unwrap(model).state_dict()

    def load_model_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        self.unwrap(model).load_state_dict(state)

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer):
        """The optimizer state for a checkpoint; every rank calls it (it may be a collective)."""
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state) -> None:
        optimizer.load_state_dict(state)

    def teardown(self) -> None:
        """Undo :meth:`setup_model` side effects."""

    def setup_precision(self, precision) -> None:
        """Called once after ``precision.setup`` (a pipeline runs each stage under its autocast)."""

    def step_functions(self):
        """``(train_step, eval_step)`` for a strategy that owns forward+backward (a pipeline
        schedule), or None for the shared ones in ``worker/step.py``."""
        return None

    def rows_per_read(self, global_batch_size: int) -> int:
        """Rows this worker reads from its dataset shard per step."""
        return global_batch_size // max(self.world_size, 1)

    def local_rows(self, *tensors: torch.Tensor):
        """This worker's rows of a batch it read (all of them, by default)."""
        return tensors

    def gather_stage_states(self, local: dict) -> list[dict] | None:
        """Per-stage optimizer/precision/technique states where the model is split (collective), else None."""
        return None

    def stage_state(self, state: dict) -> dict:
        """This worker's optimizer/precision/technique states in a checkpoint."""
        return state
