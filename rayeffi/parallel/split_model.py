"""Turning a built-in model into its intra-layer split: pure functions over ``nn.Sequential``.

Two rules, applied to a run of layers (``MLP.layers``, ``ConvNet.features``,
``ConvNet.classifier``):

- **Pairs** (``split_chain``, fully connected and feature-map modes): the first layer
  of a pair is split by outputs and leaves its output split; element-wise layers
  (ReLU, ...; and, for feature maps, pooling) run on the split as it is; the next layer
  of the same kind is split by inputs and sums the partials, so a pair costs one
  all-reduce each way. A layer followed by anything else (or by nothing) gathers its
  output instead. A layer whose output width does not divide by the group size stays
  whole, replicated on every rank.
- **Spatial blocks** (``split_spatial``): the whole run of convolution, element-wise and
  pooling layers runs on tiles in a :class:`SpatialRegion`. What it takes:
  convolutions with stride 1, dilation 1, odd kernels and "same" zero padding
  ``(k - 1) / 2`` (the halo), no wider than a tile; pooling (max or average) with
  kernel = stride, no padding, each tile's height and width divisible by the stride
  (so no pooling window straddles two tiles); element-wise activations. The image's
  height must divide by the grid's rows and its width by its columns, at every layer.
"""

from __future__ import annotations

from torch import nn

from rayeffi.parallel.halo import SpatialGrid
from rayeffi.parallel.mesh import RankGroup
from rayeffi.parallel.split_layers import (
    ColumnParallelLinear,
    InChannelConv2d,
    OutChannelConv2d,
    RowParallelLinear,
    SpatialConv2d,
    SpatialRegion,
)

ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity)
POOLING = (nn.MaxPool2d, nn.AvgPool2d)

_SPLITS = {
    nn.Linear: (ColumnParallelLinear, RowParallelLinear, ELEMENTWISE),
    nn.Conv2d: (OutChannelConv2d, InChannelConv2d, ELEMENTWISE + POOLING),
}


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def split_chain(layers: nn.Sequential, kind: type[nn.Module], group: RankGroup) -> nn.Sequential:
    """Split every ``kind`` layer of ``layers`` in place (output/input pairs); returns ``layers``."""
    by_outputs, by_inputs, passes_split = _SPLITS[kind]
    open_index = None  # index of a by-outputs layer whose output is still split
    for index, layer in enumerate(layers):
        if type(layer) is kind:
            if open_index is not None:
                layers[index] = by_inputs(layer, group)
                open_index = None
            elif _width(layer) % group.size == 0:
                layers[index] = by_outputs(layer, group)
                open_index = index
        elif not isinstance(layer, passes_split) and open_index is not None:
            layers[open_index].gather = True  # the next layer needs the whole tensor
            open_index = None
    if open_index is not None:
        layers[open_index].gather = True
    return layers


def check_spatial(layers: nn.Sequential, image_hw: tuple[int, int], grid: tuple[int, int], where: str) -> None:
    """Raise ``ValueError`` naming the first layer spatial splitting cannot take (see the module doc)."""
    rows, cols = grid
    height, width = image_hw
    for index, layer in enumerate(layers):
        name = f"{where}.{index} ({type(layer).__name__})"
        if height % rows or width % cols:
            raise ValueError(
                f"{name}: its {height}x{width} input does not cut into a {rows}x{cols} grid of equal tiles: "
                "use a grid whose rows divide the height and columns divide the width"
            )
        tile_h, tile_w = height // rows, width // cols
        if isinstance(layer, nn.Conv2d):
            _check_conv(layer, name, tile_h, tile_w)
        elif isinstance(layer, POOLING):
            height, width = _check_pool(layer, name, tile_h, tile_w, height, width)
        elif not isinstance(layer, ELEMENTWISE):
            raise ValueError(
                f"{name} cannot run on spatial tiles: only Conv2d, MaxPool2d/AvgPool2d and element-wise "
                "activations can (set parallel.conv=channels or none)"
            )


def _check_conv(conv: nn.Conv2d, name: str, tile_h: int, tile_w: int) -> None:
    kernel, padding = conv.kernel_size, conv.padding
    same = all(k % 2 == 1 and p == (k - 1) // 2 for k, p in zip(kernel, padding))
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or not same:
        raise ValueError(
            f"{name}: kernel {kernel}, stride {conv.stride}, padding {padding}, dilation {conv.dilation} is not "
            "supported on spatial tiles: use stride 1, dilation 1, an odd kernel and 'same' zero padding (k-1)/2, "
            "or set parallel.conv=channels"
        )
    if padding[0] > tile_h or padding[1] > tile_w:
        raise ValueError(
            f"{name}: a halo of {padding} is wider than the {tile_h}x{tile_w} tiles: use a coarser parallel.grid"
        )


def _check_pool(pool: nn.Module, name: str, tile_h: int, tile_w: int, height: int, width: int) -> tuple[int, int]:
    kernel, stride, padding = (_pair(getattr(pool, key)) for key in ("kernel_size", "stride", "padding"))
    dilation = _pair(getattr(pool, "dilation", 1))
    if kernel != stride or padding != (0, 0) or dilation != (1, 1) or pool.ceil_mode:
        raise ValueError(
            f"{name}: pooling kernel {kernel}, stride {stride}, padding {padding} is not supported on spatial "
            "tiles: use kernel = stride, no padding (e.g. MaxPool2d(2))"
        )
    if tile_h % stride[0] or tile_w % stride[1]:
        raise ValueError(
            f"{name}: {tile_h}x{tile_w} tiles do not divide by the pooling stride {stride}, so a window would "
            "straddle two tiles: use a grid with larger tiles"
        )
    return height // stride[0], width // stride[1]


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def split_spatial(layers: nn.Sequential, grid: SpatialGrid) -> SpatialRegion:
    """``layers`` (already checked by :func:`check_spatial`) as a region running on tiles."""
    converted = [SpatialConv2d(layer, grid) if isinstance(layer, nn.Conv2d) else layer for layer in layers]
    return SpatialRegion(converted, grid)
