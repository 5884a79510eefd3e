"""The DSD technique: plugs the sparsity functions into the step, phase by phase.

Per epoch it looks up its phase (:func:`rayeffi.techniques.dsd.config.dsd_phases`). Entering a
sparse phase it chooses masks once from the current weights, zeros the pruned weights
and their optimizer state; during the phase it masks gradients after backward and
weights after every optimizer step. Entering a re-dense phase it keeps a copy of the
sparse weights (for export), drops the masks (pruned weights restart from zero) and
scales the learning rate by the phase's factor (through :meth:`lr_factor`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rayeffi.techniques.base import Technique
from rayeffi.techniques.dsd.sparsity import (
    apply_masks,
    layer_targets,
    magnitude_histogram,
    magnitude_masks,
    mask_gradients,
    mask_optimizer_state,
    measured_sparsity,
    overall_sparsity,
)
from rayeffi.techniques.dsd.layers import plan_pruning

if TYPE_CHECKING:
    # pure configuration (pydantic): annotations only, so the step imports without pydantic
    from rayeffi.techniques.dsd.config import DsdConfig, Phase

HISTOGRAM_EDGES = torch.linspace(-6.0, 1.0, 57)  # log10 |w| from 1e-6 to 10


class DenseSparseDense(Technique):
    name = "dsd"

    def __init__(self, config: DsdConfig):
        self.config = config
        from rayeffi.techniques.dsd.config import dsd_phases  # with its config: pydantic is needed from here on

        self.phases = dsd_phases(config)
        self.phase_index = -1
        self.masks: dict[str, torch.Tensor] | None = None
        self.sparse_snapshot: dict[str, Any] = {}
        self._epoch_extras: dict[str, Any] = {}

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        config = self.config
        plan = plan_pruning(model, config.skip, config.skip_first_conv, config.prune_embeddings)
        self.weights, self.blocks, self.dense = plan.prunable, plan.blocks, plan.dense

    def phase_at(self, epoch: int) -> Phase:
        return next(phase for phase in self.phases if epoch in phase.epochs)

    def lr_factor(self, epoch: int) -> float:
        return self.phase_at(min(epoch, self.phases[-1].epochs[-1])).lr_factor

    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        index = self.phases.index(self.phase_at(epoch))
        if index == self.phase_index:
            return  # same phase (or resumed inside it, masks restored from the checkpoint)
        phase, self.phase_index = self.phases[index], index
        if phase.kind == "sparse":
            self._prune(phase, optimizer)
        else:
            if self.masks is not None:
                self._snapshot(self.phases[index - 1])
            self.masks = None  # re-dense: pruned weights train again, starting from zero

    def _prune(self, phase: Phase, optimizer: torch.optim.Optimizer) -> None:
        before = magnitude_histogram(self.weights, HISTOGRAM_EDGES)
        targets = layer_targets(self.weights, phase.sparsity, self.config.layer_sparsity)
        self.masks = magnitude_masks(self.weights, targets, self.blocks)  # chosen once per sparse phase
        apply_masks(self.weights, self.masks)
        mask_optimizer_state(optimizer, self.weights, self.masks)
        after = magnitude_histogram(self.weights, HISTOGRAM_EDGES)
        self._epoch_extras["pruning_histogram"] = {
            "log10_edges": HISTOGRAM_EDGES.tolist(), "before": before, "after": after,
        }

    def _snapshot(self, sparse_phase: Phase) -> None:
        self.sparse_snapshot = {
            "round": sparse_phase.round,
            "sparsity": sparse_phase.sparsity,
            "model": {name: value.detach().clone() for name, value in self.model.state_dict().items()},
            "masks": {name: mask.clone() for name, mask in self.masks.items()},
        }

    def after_backward(self, model: nn.Module) -> None:
        if self.masks is not None:
            mask_gradients(self.weights, self.masks)

    def after_step(self, model: nn.Module) -> None:
        if self.masks is not None:
            # momentum or Adam moments would otherwise move pruned weights off zero
            apply_masks(self.weights, self.masks)

    def metrics(self) -> dict[str, Any]:
        phase = self.phases[self.phase_index]
        metrics = {
            "dsd_phase": phase.kind,
            "dsd_round": phase.round,
            "target_sparsity": phase.sparsity,
            "sparsity": overall_sparsity(self.weights),
            "layer_sparsity": measured_sparsity(self.weights),
            "dense_layers": dict(self.dense),  # every weight matrix left dense, and why
            **self._epoch_extras,
        }
        self._epoch_extras = {}
        return metrics

    def final_sparse_state(self) -> dict[str, Any]:
        """The last sparse phase's weights and masks (the live ones if still sparse)."""
        if self.masks is not None:
            self._snapshot(self.phases[self.phase_index])
        return self.sparse_snapshot

    def state_dict(self) -> dict[str, Any]:
        return {
            "phase_index": self.phase_index,
            "masks": dict(self.masks) if self.masks is not None else None,
            "sparse": self.final_sparse_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.phase_index = state["phase_index"]
        masks = state["masks"]
        self.masks = None if masks is None else {n: m.to(self.weights[n].device) for n, m in masks.items()}
        self.sparse_snapshot = state["sparse"]
