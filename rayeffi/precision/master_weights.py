"""FP32 master weights for an FP16 model (Micikevicius et al. 2018, Section 3.1): pure functions.

The model's weights live in FP16, so the forward and backward passes read and write
half the bytes. The optimizer, however, updates an FP32 copy: an update
``lr * g`` is often smaller than half the spacing of FP16 numbers around the
weight (2^-11 relative: a weight of 1.0 cannot move by less than ~4.9e-4), so
applied to FP16 weights it rounds away and training stalls. Per step:

    master.grad = fp32(w16.grad)             # copy; still multiplied by the loss scale
    master.grad /= S                          # unscale in FP32
    master -= update(master.grad)             # optimizer step in FP32
    w16 = fp16(master)                        # round once, for the next forward

Normalisation layers keep FP32 weights (as Apex's ``keep_batchnorm_fp32`` does):
their statistics are reductions, and the paper keeps reductions in FP32.
"""

from __future__ import annotations

import torch
from torch import nn

FP32_LAYERS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
"""Layers whose parameters stay FP32 in an FP16 model."""

Pairs = list[tuple[torch.Tensor, torch.Tensor]]
"""``(FP16 model parameter, its FP32 master)`` in optimizer order."""


def cast_to_fp16_(model: nn.Module, keep_fp32: tuple[type[nn.Module], ...] = FP32_LAYERS) -> dict[int, torch.Tensor]:
    """Cast the model's floating parameters and buffers to FP16 in place, except in ``keep_fp32`` layers.

    Returns ``id(parameter) -> FP32 copy taken before the cast``: exact masters, even for
    weights loaded from an FP32 checkpoint. Parameters stay the same objects (only
    ``.data`` changes), so a later ``.to(device)`` or DDP wrap still sees them.
    """
    masters: dict[int, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, keep_fp32):
            continue
        for param in module.parameters(recurse=False):
            if param.is_floating_point() and id(param) not in masters:  # tied weights: cast once
                masters[id(param)] = param.detach().float().clone()
                param.data = param.data.to(torch.float16)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                setattr(module, name, buffer.to(torch.float16))
    return masters


def point_optimizer_at_masters_(optimizer: torch.optim.Optimizer, masters: dict[int, torch.Tensor]) -> Pairs:
    """Replace every FP16 parameter in the optimizer's groups by its FP32 master.

    Parameters without a master (FP32 norm layers) stay as they are. The masters move
    to their parameter's device; any optimizer state moves with them. Returns the
    ``(FP16 parameter, FP32 master)`` pairs.
    """
    pairs: Pairs = []
    for group in optimizer.param_groups:
        params = []
        for param in group["params"]:
            if id(param) not in masters:
                params.append(param)
                continue
            master = masters[id(param)].to(param.device).requires_grad_(param.requires_grad)
            if param in optimizer.state:
                optimizer.state[master] = optimizer.state.pop(param)
            pairs.append((param, master))
            params.append(master)
        group["params"] = params
    return pairs


def grads_to_masters_(pairs: Pairs) -> None:
    """Copy each FP16 gradient into its master's FP32 ``.grad`` and free the FP16 one.

    The copy is exact (every FP16 number is an FP32 number); the loss scale is still in
    it. The optimizer's ``zero_grad`` only reaches the masters, so the FP16 gradients
    are released here, or the next backward would add to them.
    """
    for param, master in pairs:
        master.grad = None if param.grad is None else param.grad.float()
        param.grad = None


@torch.no_grad()
def masters_to_model_(pairs: Pairs) -> None:
    """Round the FP32 masters to the model's FP16 weights (the only FP32 -> FP16 cast of weights)."""
    for param, master in pairs:
        param.copy_(master)
