"""``parallel: {strategy: intra_layer, ...}``: layers split across a group of workers.

A model-parallel group of ``model_parallel_size`` workers runs one copy of the model,
each layer split across the group (``rayeffi/parallel/split_layers.py``); with more
workers than one group, the groups are data-parallel replicas (a 2-D mesh).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import PositiveInt, model_validator

from rayeffi.recipe.strategy import StrategyConfig

CONV_MODES = ("spatial", "channels", "none")
FC_MODES = ("split", "none")


class IntraLayerConfig(StrategyConfig):
    """``strategy: intra_layer``: convolutions by spatial blocks or feature maps, FC layers by outputs."""

    strategy: Literal["intra_layer"] = "intra_layer"
    conv: Literal["spatial", "channels", "none"] = "spatial"
    """``spatial``: the image cut into ``grid`` tiles, one per worker, halos exchanged.
    ``channels``: convolutions split by output feature maps (paired with the next one
    split by input maps). ``none``: convolutions replicated on every worker."""
    fc: Literal["split", "none"] = "split"
    """``split``: Linear layers split by output activations (paired with the next one
    split by inputs). ``none``: replicated."""
    grid: tuple[PositiveInt, PositiveInt] | None = None
    """``[rows, cols]`` of spatial tiles (``conv: spatial``); rows x cols workers form one
    model-parallel group. Default: the squarest grid over ``model_parallel_size``
    (4 workers: 2x2, 2 workers: 1x2)."""
    model_parallel_size: PositiveInt | None = None
    """Workers per model-parallel group; ``scaling.num_workers`` must be a multiple
    (the quotient is the data-parallel size). Default: ``grid``'s rows x cols, else all
    workers."""

    @model_validator(mode="after")
    def _consistent(self) -> IntraLayerConfig:
        if self.conv == "none" and self.fc == "none":
            raise ValueError("parallel: conv and fc are both 'none', nothing is split: set parallel.conv=spatial")
        if self.grid is not None and self.conv != "spatial":
            raise ValueError(f"parallel.grid only applies to conv 'spatial', not {self.conv!r}: remove it")
        if self.grid is not None and self.model_parallel_size not in (None, self.grid[0] * self.grid[1]):
            raise ValueError(
                f"parallel.grid {list(self.grid)} has {self.grid[0] * self.grid[1]} tiles but "
                f"parallel.model_parallel_size is {self.model_parallel_size}: make them agree or drop one"
            )
        return self

    @property
    def fixed_group_size(self) -> int | None:
        """The model-parallel group size the recipe pins, or None (then: all workers)."""
        if self.grid is not None:
            return self.grid[0] * self.grid[1]
        return self.model_parallel_size

    def group_size(self, num_workers: int) -> int:
        return self.fixed_group_size or max(num_workers, 1)

    def spatial_grid(self, group_size: int) -> tuple[int, int]:
        return self.grid or squarest_grid(group_size)

    def check_stage(self, stage: Any) -> None:
        """The model and worker count fit the layout (the tiles themselves are checked on the
        driver, which builds the model: ``parallel/intra_layer.py: check_intra_layer_stage``)."""
        if stage.model.name not in ("mlp", "cnn"):
            raise ValueError(f"parallel.strategy intra_layer splits the built-in models mlp and cnn, not {stage.model.name!r}")
        if stage.model.dropout:
            raise ValueError(
                "parallel.strategy intra_layer needs model.dropout=0: the ranks of a model-parallel group "
                "hold replicated activations that would draw different dropout masks"
            )
        num_workers = stage.scaling.num_workers
        size = self.group_size(num_workers)
        if num_workers and num_workers % size:
            raise ValueError(
                f"parallel.model_parallel_size {size} does not divide scaling.num_workers {num_workers}: "
                f"use a multiple of {size} workers"
            )

    def smoke_num_workers(self, num_workers: int, max_workers: int) -> int:
        """Fewer workers only where the layout stays valid: a multiple of a pinned group
        size, or any count when the group is all workers (a 2x2 grid becomes 1x2)."""
        size = self.fixed_group_size
        if size is None:
            return min(num_workers, max_workers)
        if size > max_workers:
            return num_workers  # the pinned layout needs them all
        return min(num_workers, max_workers) // size * size or num_workers


def squarest_grid(num_tiles: int) -> tuple[int, int]:
    """``rows x cols == num_tiles`` with ``rows <= cols`` as close as possible (4: 2x2, 2: 1x2, 6: 2x3)."""
    rows = max(r for r in range(1, math.isqrt(num_tiles) + 1) if num_tiles % r == 0)
    return rows, num_tiles // rows
