"""Recipes: YAML parsed once into typed, frozen models."""

from rayeffi.recipe.load import load_recipe, parse_override, set_dotted, smoke_recipe, validate_recipe
from rayeffi.recipe.models import GLOBAL_SECTIONS, Recipe, StageConfig, TrainStageConfig, TuneConfig, deep_merge
from rayeffi.recipe.parallel import PARALLEL_CONFIGS, DataParallelConfig, ParallelConfig
from rayeffi.recipe.sections import (
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    ScalingConfig,
    ScheduleConfig,
    SyntheticDataConfig,
)

__all__ = [
    "GLOBAL_SECTIONS",
    "PARALLEL_CONFIGS",
    "DataConfig",
    "DataParallelConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ParallelConfig",
    "Recipe",
    "ScalingConfig",
    "ScheduleConfig",
    "StageConfig",
    "SyntheticDataConfig",
    "TrainStageConfig",
    "TuneConfig",
    "deep_merge",
    "load_recipe",
    "parse_override",
    "set_dotted",
    "smoke_recipe",
    "validate_recipe",
]
