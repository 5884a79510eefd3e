"""Parallel strategies: one per stage, chosen by the recipe's ``parallel.strategy``."""

from __future__ import annotations

import torch

from rayeffi.parallel.base import Strategy
from rayeffi.parallel.data_parallel import DataParallel
from rayeffi.parallel.intra_layer import IntraLayer, check_intra_layer_stage
from rayeffi.recipe.parallel import ParallelConfig

STRATEGIES: dict[str, type[Strategy]] = {"data_parallel": DataParallel}
"""``parallel.strategy`` -> its class. ``pipeline``, ``param_server`` and ``intra_layer`` join here."""
STRATEGIES["intra_layer"] = IntraLayer


STRATEGY_CHECKS = {"intra_layer": check_intra_layer_stage}
"""``parallel.strategy`` -> its driver-side checks of a stage (before Ray starts), beyond the config's own."""


def build_strategy(config: ParallelConfig, world_rank: int, world_size: int, device: torch.device) -> Strategy:
    return STRATEGIES[config.strategy](world_rank, world_size, device, config=config)


__all__ = ["STRATEGIES", "STRATEGY_CHECKS", "DataParallel", "IntraLayer", "Strategy", "build_strategy"]
