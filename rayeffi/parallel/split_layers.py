"""Layers split across the ranks of one model-parallel group, built from an unsplit layer.

Fully connected (Shoeybi et al., Megatron-LM, 2019): ``y = x W^T + b`` with ``W``
``[out, in]``.

- :class:`ColumnParallelLinear` splits by output activations: rank ``i`` holds rows
  ``W_i`` and computes ``y_i = x W_i^T + b_i`` from the replicated ``x``; ``gather``
  concatenates the ``y_i`` for a layer that needs all of ``y``.
- :class:`RowParallelLinear` is its partner: rank ``i`` holds columns ``W_{:,i}``, takes
  the split ``x_i`` a column-parallel layer left, and ``y = sum_i x_i W_{:,i}^T + b`` is
  one all-reduce. A column + row pair costs one all-reduce forward and one backward.

Convolutions by feature maps: the same two splits over channels (``W`` is
``[C_out, C_in, k, k]``): :class:`OutChannelConv2d` computes ``C_out / P`` output maps
from all input maps; :class:`InChannelConv2d` convolves ``C_in / P`` input maps into a
partial sum of all output maps, summed by an all-reduce.

Convolutions by spatial blocks: :class:`SpatialConv2d` convolves one tile of the image
after a halo exchange (``halo.py``); every rank holds the whole (small) kernel, and
its gradient, a sum over tiles, is all-reduced. :class:`SpatialRegion` runs a run of
such layers from the whole image to the whole image: tile it, run, gather the tiles.

Every layer computes exactly the unsplit layer's outputs and gradients (up to the
order of floating-point sums). A sharded layer names its sharded parameters and dims
in ``shard_dims`` so the strategy can gather whole tensors for checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rayeffi.parallel.collectives import copy_to_group, gather_from_group, my_slice, reduce_from_group
from rayeffi.parallel.halo import SpatialGrid, exchange_halo, gather_tiles, scatter_tiles
from rayeffi.parallel.mesh import RankGroup


# The split layers take over the unsplit layer's Parameter objects (sharded in place):
# whatever already refers to them by identity (fp16-master's FP32 masters) keeps working.
def _shard(parameter: nn.Parameter | None, dim: int, group: RankGroup) -> nn.Parameter | None:
    if parameter is not None:
        parameter.data = my_slice(parameter.data, dim, group)
    return parameter


class ColumnParallelLinear(nn.Module):
    """``Linear`` split by output features; ``gather=True`` returns the whole output."""

    shard_dims = {"weight": 0, "bias": 0}

    def __init__(self, linear: nn.Linear, group: RankGroup, gather: bool = False):
        super().__init__()
        self.group, self.gather = group, gather
        self.weight = _shard(linear.weight, 0, group)
        self.bias = _shard(linear.bias, 0, group)

    def forward(self, x):
        y = F.linear(copy_to_group(x, self.group), self.weight, self.bias)
        return gather_from_group(y, -1, self.group) if self.gather else y


class RowParallelLinear(nn.Module):
    """``Linear`` split by input features; takes a column-split input, returns the whole output."""

    shard_dims = {"weight": 1}

    def __init__(self, linear: nn.Linear, group: RankGroup):
        super().__init__()
        self.group = group
        self.weight = _shard(linear.weight, 1, group)
        self.bias = linear.bias  # added once, after the sum

    def forward(self, x_split):
        y = reduce_from_group(F.linear(x_split, self.weight), self.group)
        return y if self.bias is None else y + self.bias


def _conv_options(conv: nn.Conv2d) -> dict:
    return {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}


class OutChannelConv2d(nn.Module):
    """``Conv2d`` split by output feature maps; ``gather=True`` returns all of them."""

    shard_dims = {"weight": 0, "bias": 0}

    def __init__(self, conv: nn.Conv2d, group: RankGroup, gather: bool = False):
        super().__init__()
        self.group, self.gather, self.options = group, gather, _conv_options(conv)
        self.weight = _shard(conv.weight, 0, group)
        self.bias = _shard(conv.bias, 0, group)

    def forward(self, x):
        y = F.conv2d(copy_to_group(x, self.group), self.weight, self.bias, **self.options)
        return gather_from_group(y, 1, self.group) if self.gather else y


class InChannelConv2d(nn.Module):
    """``Conv2d`` split by input feature maps: partial sums of every output map, all-reduced."""

    shard_dims = {"weight": 1}

    def __init__(self, conv: nn.Conv2d, group: RankGroup):
        super().__init__()
        self.group, self.options = group, _conv_options(conv)
        self.weight = _shard(conv.weight, 1, group)
        self.bias = conv.bias

    def forward(self, x_split):
        y = reduce_from_group(F.conv2d(x_split, self.weight, None, **self.options), self.group)
        return y if self.bias is None else y + self.bias[:, None, None]


class SpatialConv2d(nn.Module):
    """``Conv2d`` (stride 1, odd kernel, "same" zero padding) on my tile after a halo exchange."""

    shard_dims: dict[str, int] = {}

    def __init__(self, conv: nn.Conv2d, grid: SpatialGrid):
        super().__init__()
        self.grid = grid
        self.halo_h, self.halo_w = conv.padding
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, tile):
        extended = exchange_halo(tile, self.grid, self.halo_h, self.halo_w)
        group = self.grid.group
        # every tile adds its part of the kernel's gradient: summed across the group in backward
        weight = copy_to_group(self.weight, group)
        bias = None if self.bias is None else copy_to_group(self.bias, group)
        return F.conv2d(extended, weight, bias)


class SpatialRegion(nn.Sequential):
    """Layers that run on tiles: whole image in, my tile through the layers, whole image out.

    A ``Sequential`` with the original children's indices, so parameter names (and
    checkpoints) stay those of the unsplit model.
    """

    def __init__(self, layers: list[nn.Module], grid: SpatialGrid):
        super().__init__(*layers)
        self.grid = grid

    def forward(self, images):
        tile = scatter_tiles(images, self.grid)
        for layer in self:
            tile = layer(tile)
        return gather_tiles(tile, self.grid)
