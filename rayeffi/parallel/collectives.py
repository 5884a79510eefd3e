"""Autograd-aware collectives over one model-parallel group (Shoeybi et al., Megatron-LM, 2019).

The four conjugate pairs a split layer is built from; each forward has the backward
that keeps gradients equal to the unsplit layer's:

============================  ==============================  =============================
function                      forward                         backward
============================  ==============================  =============================
:func:`copy_to_group`         identity (input replicated)     all-reduce (sum the partials)
:func:`reduce_from_group`     all-reduce (sum the partials)   identity (gradient replicated)
:func:`gather_from_group`     all-gather along ``dim``        keep my slice
:func:`split_to_group`        keep my slice along ``dim``     all-gather along ``dim``
============================  ==============================  =============================

"Replicated" means every rank of the group holds the same tensor and computes the
same thing with it, so a replicated gradient needs no communication.

:data:`TRAFFIC` counts the bytes each rank sends, by collective, at the volume of the
standard algorithms (ring all-reduce sends ``2 (P-1)/P`` of the tensor, all-gather
``(P-1)`` times its input, a halo send its exact size); ``rayeffi bench intra-layer``
reads it.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.distributed as dist
from torch.autograd import Function

from rayeffi.parallel.mesh import RankGroup

TRAFFIC: Counter = Counter()
"""Bytes sent by this process, keyed by collective (``all_reduce``, ``all_gather``, ``halo``)."""


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def all_reduce(tensor: torch.Tensor, group: RankGroup) -> torch.Tensor:
    """Sum ``tensor`` over the group, in place; returns it."""
    if group.size > 1:
        dist.all_reduce(tensor, group=group.group)  # sync point
        TRAFFIC["all_reduce"] += 2 * (group.size - 1) * _nbytes(tensor) // group.size
    return tensor


def all_gather(tensor: torch.Tensor, group: RankGroup) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (all the same shape), in group order."""
    if group.size == 1:
        return [tensor]
    tensor = tensor.contiguous()
    pieces = [torch.empty_like(tensor) for _ in range(group.size)]
    dist.all_gather(pieces, tensor, group=group.group)  # sync point
    TRAFFIC["all_gather"] += (group.size - 1) * _nbytes(tensor)
    return pieces


def my_slice(tensor: torch.Tensor, dim: int, group: RankGroup) -> torch.Tensor:
    """My equal share of ``tensor`` along ``dim`` (its size must divide by the group size)."""
    return tensor.chunk(group.size, dim)[group.index].contiguous()


class _CopyToGroup(Function):
    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce(grad.contiguous().clone(), ctx.group), None


class _ReduceFromGroup(Function):
    @staticmethod
    def forward(ctx, tensor, group):
        return all_reduce(tensor.contiguous().clone(), group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherFromGroup(Function):
    @staticmethod
    def forward(ctx, tensor, dim, group):
        ctx.dim, ctx.group = dim, group
        return torch.cat(all_gather(tensor, group), dim)

    @staticmethod
    def backward(ctx, grad):
        return my_slice(grad, ctx.dim, ctx.group), None, None


class _SplitToGroup(Function):
    @staticmethod
    def forward(ctx, tensor, dim, group):
        ctx.dim, ctx.group = dim, group
        return my_slice(tensor, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return torch.cat(all_gather(grad, ctx.group), ctx.dim), None, None


def copy_to_group(tensor: torch.Tensor, group: RankGroup) -> torch.Tensor:
    return tensor if group.size == 1 else _CopyToGroup.apply(tensor, group)


def reduce_from_group(tensor: torch.Tensor, group: RankGroup) -> torch.Tensor:
    return tensor if group.size == 1 else _ReduceFromGroup.apply(tensor, group)


def gather_from_group(tensor: torch.Tensor, dim: int, group: RankGroup) -> torch.Tensor:
    return tensor if group.size == 1 else _GatherFromGroup.apply(tensor, dim, group)


def split_to_group(tensor: torch.Tensor, dim: int, group: RankGroup) -> torch.Tensor:
    return tensor if group.size == 1 else _SplitToGroup.apply(tensor, dim, group)
