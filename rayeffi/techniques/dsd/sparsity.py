"""Magnitude pruning with fixed masks, as pure functions (Han et al. 2015, 2017).

A mask is a boolean tensor per weight, True where the weight is kept. Masks are
chosen from weight magnitudes once and then held fixed: gradients and weights are
multiplied by them after every step, so pruned weights stay exactly zero whatever
the optimizer's state would do.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from rayeffi.techniques.dsd.layers import plan_pruning

Masks = dict[str, torch.Tensor]


def prunable_weights(model: nn.Module, skip: tuple[str, ...] = (), skip_first_conv: bool = True,
                     prune_embeddings: bool = False) -> dict[str, nn.Parameter]:
    """``name -> weight`` of every weight matrix DSD prunes (see :mod:`.layers` for which and why).

    Biases and normalisation parameters are never returned, nor the first convolution
    when ``skip_first_conv``, nor embeddings unless ``prune_embeddings``, nor any
    parameter whose name matches a ``skip`` pattern (fnmatch); tied weights appear once.
    """
    return plan_pruning(model, skip, skip_first_conv, prune_embeddings).prunable


def layer_targets(names, sparsity: float, overrides: dict[str, float]) -> dict[str, float]:
    """Target sparsity per layer: the first matching override pattern, else ``sparsity``."""
    targets = {}
    for name in names:
        matches = [value for pattern, value in overrides.items() if fnmatch.fnmatchcase(name, pattern)]
        targets[name] = matches[0] if matches else sparsity
    return targets


@torch.no_grad()
def magnitude_masks(weights: dict[str, torch.Tensor], targets: dict[str, float],
                    blocks: dict[str, int] | None = None) -> Masks:
    """Per layer, prune the ``round(sparsity * numel)`` weights of smallest magnitude.

    ``blocks[name] = B`` splits the weight's rows into B equal blocks pruned to the
    target each (an LSTM's four gates, attention's q, k, v). Ties are broken by
    position (a stable sort), so the same weights give the same mask on every
    data-parallel rank. Measured sparsity equals the target to within one weight per block.
    """
    masks = {}
    for name, weight in weights.items():
        num_blocks = (blocks or {}).get(name, 1)
        rows = weight.detach().reshape(num_blocks, -1)  # row blocks are contiguous in memory
        keep = torch.ones(rows.shape, dtype=torch.bool, device=weight.device)
        num_pruned = round(targets[name] * rows.shape[1])
        if num_pruned:
            for block in range(num_blocks):
                order = torch.argsort(rows[block].abs().float(), stable=True)
                keep[block, order[:num_pruned]] = False
        masks[name] = keep.view_as(weight)
    return masks


@torch.no_grad()
def apply_masks(weights: dict[str, torch.Tensor], masks: Masks) -> None:
    """Zero the pruned weights in place."""
    for name, mask in masks.items():
        weights[name].mul_(mask)


@torch.no_grad()
def mask_gradients(weights: dict[str, torch.Tensor], masks: Masks) -> None:
    """Zero the gradients of pruned weights in place (before the optimizer sees them)."""
    for name, mask in masks.items():
        grad = weights[name].grad
        if grad is not None:
            grad.mul_(mask)


@torch.no_grad()
def mask_optimizer_state(optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor], masks: Masks) -> None:
    """Zero momentum / Adam moments of pruned weights so they carry nothing into the sparse phase."""
    for name, mask in masks.items():
        for value in optimizer.state.get(weights[name], {}).values():
            if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                value.mul_(mask)


@torch.no_grad()
def measured_sparsity(weights: dict[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of exact zeros per weight."""
    return {name: (weight == 0).sum().item() / weight.numel() for name, weight in weights.items()}


def overall_sparsity(weights: dict[str, torch.Tensor]) -> float:
    zeros = sum((w == 0).sum().item() for w in weights.values())
    return zeros / max(sum(w.numel() for w in weights.values()), 1)


@torch.no_grad()
def magnitude_histogram(weights: dict[str, torch.Tensor], edges: torch.Tensor) -> list[int]:
    """Counts of non-zero |w| over ``edges`` (log10 scale), all prunable layers together."""
    values = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
    values = values[values > 0].log10().clamp(edges[0].item(), edges[-1].item())
    return torch.histogram(values.cpu(), bins=edges).hist.long().tolist()
