"""Recipes: YAML parsed once into typed, frozen models."""

from rayeffi.recipe.load import load_recipe, parse_override, set_dotted, smoke_recipe, validate_recipe
from rayeffi.recipe.models import GLOBAL_SECTIONS, Recipe, StageConfig, TrainStageConfig, TuneConfig, deep_merge
from rayeffi.recipe.sections import (
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    ParallelConfig,
    ScalingConfig,
    ScheduleConfig,
    SyntheticDataConfig,
)

__all__ = [
    "GLOBAL_SECTIONS",
    "DataConfig",
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
