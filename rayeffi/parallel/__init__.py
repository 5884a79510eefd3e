"""Parallel strategies: one per stage, chosen by the recipe's ``parallel.strategy``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rayeffi.parallel.base import Strategy
from rayeffi.parallel.data_parallel import DataParallel
from rayeffi.parallel.intra_layer import IntraLayer, check_intra_layer_stage
from rayeffi.parallel.pipeline import Pipeline, check_pipeline_stage

if TYPE_CHECKING:
    # pure configuration (pydantic): annotations only, so the step imports without pydantic
    from rayeffi.recipe.parallel import ParallelConfig

STRATEGIES: dict[str, type[Strategy]] = {"data_parallel": DataParallel, "pipeline": Pipeline, "intra_layer": IntraLayer}
"""``parallel.strategy`` -> its class (the parameter server is its own execution model, not a Strategy)."""

STRATEGY_CHECKS = {"intra_layer": check_intra_layer_stage, "pipeline": check_pipeline_stage}
"""``parallel.strategy`` -> its driver-side checks of a stage (before Ray starts), beyond the config's own."""


def build_strategy(
    config: ParallelConfig, world_rank: int, world_size: int, device: torch.device, info=None
) -> Strategy:
    return STRATEGIES[config.strategy].from_config(config, world_rank, world_size, device, info)


__all__ = ["STRATEGIES", "STRATEGY_CHECKS", "DataParallel", "IntraLayer", "Pipeline", "Strategy", "build_strategy"]
