"""Parallel strategies: one per stage, chosen by the recipe's ``parallel.strategy``."""

from __future__ import annotations

import torch

from rayeffi.parallel.base import Strategy
from rayeffi.parallel.data_parallel import DataParallel
from rayeffi.parallel.pipeline import Pipeline, check_pipeline_stage
from rayeffi.recipe.parallel import ParallelConfig

STRATEGIES: dict[str, type[Strategy]] = {"data_parallel": DataParallel, "pipeline": Pipeline}
"""``parallel.strategy`` -> its class. ``pipeline``, ``param_server`` and ``intra_layer`` join here."""

STRATEGY_CHECKS = {"pipeline": check_pipeline_stage}
"""``parallel.strategy`` -> a driver-side check of a stage (UserError before Ray starts)."""


def build_strategy(
    config: ParallelConfig, world_rank: int, world_size: int, device: torch.device, info=None
) -> Strategy:
    return STRATEGIES[config.strategy].from_config(config, world_rank, world_size, device, info)


__all__ = ["STRATEGIES", "STRATEGY_CHECKS", "DataParallel", "Pipeline", "Strategy", "build_strategy"]
