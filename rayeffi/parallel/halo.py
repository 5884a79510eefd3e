"""Spatial blocks of an image and the halo exchange that lets each block convolve alone.

The ``[N, C, H, W]`` tensor is cut into a ``rows x cols`` grid of equal tiles, one per
rank of the model-parallel group (rank ``index`` holds tile ``divmod(index, cols)``).
A ``k x k`` convolution with "same" padding ``p = (k - 1) / 2`` needs, around each tile,
``p`` rows and columns that its neighbours hold: the halo. Exchanging it first along H
(with the tiles above and below) and then along W (with the tiles left and right,
sending the H-extended edges) also carries the corner pixels from the diagonal
neighbours, so a padding-free convolution of the extended tile equals that tile's
part of the unsplit convolution. Where a tile meets the image border its halo is
zeros: exactly the unsplit convolution's zero padding.

Backward is the exchange reversed: the gradient of each halo strip belongs to the
neighbour that sent it, so it goes back and is added to that neighbour's edge
(Dryden et al., "Improving Strong-Scaling of CNN Training by Exploiting Finer-Grained
Parallelism", IPDPS 2019, describe the same scheme).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.autograd import Function

from rayeffi.parallel.collectives import TRAFFIC, all_gather
from rayeffi.parallel.mesh import RankGroup

HEIGHT, WIDTH = 2, 3
"""Tensor dims of an ``[N, C, H, W]`` image batch."""


@dataclass(frozen=True)
class SpatialGrid:
    """A ``rows x cols`` grid of tiles over the ranks of ``group`` (row-major)."""

    rows: int
    cols: int
    group: RankGroup

    @property
    def position(self) -> tuple[int, int]:
        return divmod(self.group.index, self.cols)

    def neighbour(self, dim: int, step: int) -> int | None:
        """Global rank of the tile ``step`` (-1 or +1) away along ``dim``, None at the border."""
        row, col = self.position
        row, col = (row + step, col) if dim == HEIGHT else (row, col + step)
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            return None
        return self.group.ranks[row * self.cols + col]


def take_tile(images: torch.Tensor, grid: SpatialGrid) -> torch.Tensor:
    """My tile of a whole ``[N, C, H, W]`` batch (H divisible by rows, W by cols)."""
    row, col = grid.position
    tile_h, tile_w = images.shape[HEIGHT] // grid.rows, images.shape[WIDTH] // grid.cols
    return images[:, :, row * tile_h : (row + 1) * tile_h, col * tile_w : (col + 1) * tile_w].contiguous()


def assemble_tiles(tiles: list[torch.Tensor], grid: SpatialGrid) -> torch.Tensor:
    """The whole image from every rank's tile, in group order."""
    rows = [torch.cat(tiles[r * grid.cols : (r + 1) * grid.cols], WIDTH) for r in range(grid.rows)]
    return torch.cat(rows, HEIGHT)


class _ScatterTiles(Function):
    """Forward: keep my tile of the replicated image. Backward: gather the whole gradient."""

    @staticmethod
    def forward(ctx, images, grid):
        ctx.grid = grid
        return take_tile(images, grid)

    @staticmethod
    def backward(ctx, grad):
        return assemble_tiles(all_gather(grad, ctx.grid.group), ctx.grid), None


class _GatherTiles(Function):
    """Forward: the whole image on every rank. Backward: keep my tile of the replicated gradient."""

    @staticmethod
    def forward(ctx, tile, grid):
        ctx.grid = grid
        return assemble_tiles(all_gather(tile, grid.group), grid)

    @staticmethod
    def backward(ctx, grad):
        return take_tile(grad, ctx.grid), None


def scatter_tiles(images: torch.Tensor, grid: SpatialGrid) -> torch.Tensor:
    return images if grid.group.size == 1 else _ScatterTiles.apply(images, grid)


def gather_tiles(tile: torch.Tensor, grid: SpatialGrid) -> torch.Tensor:
    return tile if grid.group.size == 1 else _GatherTiles.apply(tile, grid)


def _swap_edges(send_prev, send_next, prev: int | None, next_: int | None):
    """Send to both neighbours and receive from them; returns ``(from_prev, from_next)``."""
    operations, from_prev, from_next = [], None, None
    # one batch of isend/irecv: blocking sends deadlock on gloo, and NCCL needs a neighbour's
    # send and receive in one group (two separately launched sends wait on each other)
    if prev is not None:
        from_prev = torch.empty_like(send_prev)
        operations += [dist.P2POp(dist.isend, send_prev.contiguous(), prev), dist.P2POp(dist.irecv, from_prev, prev)]
        TRAFFIC["halo"] += send_prev.numel() * send_prev.element_size()
    if next_ is not None:
        from_next = torch.empty_like(send_next)
        operations += [dist.P2POp(dist.isend, send_next.contiguous(), next_), dist.P2POp(dist.irecv, from_next, next_)]
        TRAFFIC["halo"] += send_next.numel() * send_next.element_size()
    for request in dist.batch_isend_irecv(operations) if operations else ():
        request.wait()  # sync point with the neighbours
    return from_prev, from_next


class _HaloExchange(Function):
    @staticmethod
    def forward(ctx, tile, grid, dim, halo):
        ctx.grid, ctx.dim, ctx.halo = grid, dim, halo
        prev, next_ = grid.neighbour(dim, -1), grid.neighbour(dim, +1)
        size = tile.shape[dim]
        leading = tile.narrow(dim, 0, halo).contiguous()  # my first rows: the halo of the tile before me
        trailing = tile.narrow(dim, size - halo, halo).contiguous()
        from_prev, from_next = _swap_edges(leading, trailing, prev, next_)
        zeros = torch.zeros_like(leading)  # image border: the convolution's zero padding
        return torch.cat([zeros if from_prev is None else from_prev, tile, zeros if from_next is None else from_next], dim)

    @staticmethod
    def backward(ctx, grad):
        grid, dim, halo = ctx.grid, ctx.dim, ctx.halo
        prev, next_ = grid.neighbour(dim, -1), grid.neighbour(dim, +1)
        size = grad.shape[dim] - 2 * halo
        grad_tile = grad.narrow(dim, halo, size).clone()
        # the halo strips' gradients belong to the neighbours that sent them
        to_prev = grad.narrow(dim, 0, halo).contiguous()
        to_next = grad.narrow(dim, halo + size, halo).contiguous()
        from_prev, from_next = _swap_edges(to_prev, to_next, prev, next_)
        if from_prev is not None:
            grad_tile.narrow(dim, 0, halo).add_(from_prev)
        if from_next is not None:
            grad_tile.narrow(dim, size - halo, halo).add_(from_next)
        return grad_tile, None, None, None


def exchange_halo(tile: torch.Tensor, grid: SpatialGrid, halo_h: int, halo_w: int) -> torch.Tensor:
    """``tile`` extended by ``halo_h`` rows and ``halo_w`` columns of its neighbours (zeros at the border).

    Each halo must be at most the tile's size along its dim (it comes from one neighbour).
    """
    if halo_h:
        tile = _HaloExchange.apply(tile, grid, HEIGHT, halo_h)
    if halo_w:
        tile = _HaloExchange.apply(tile, grid, WIDTH, halo_w)
    return tile
