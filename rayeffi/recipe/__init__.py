"""Recipes: YAML parsed once into typed, frozen models.

Names are imported on first use (PEP 562): a technique's config
(``rayeffi/techniques/NAME/config.py``) imports ``recipe.sections`` while the recipe's
stage models import that config, and an eager ``__init__`` would close the loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayeffi._lazy import lazy_getattr

_PUBLIC = {
    "load_recipe": "rayeffi.recipe.load",
    "parse_override": "rayeffi.recipe.load",
    "set_dotted": "rayeffi.recipe.load",
    "smoke_recipe": "rayeffi.recipe.load",
    "validate_recipe": "rayeffi.recipe.load",
    "GLOBAL_SECTIONS": "rayeffi.recipe.models",
    "Recipe": "rayeffi.recipe.models",
    "StageConfig": "rayeffi.recipe.models",
    "TrainStageConfig": "rayeffi.recipe.models",
    "TuneConfig": "rayeffi.recipe.models",
    "deep_merge": "rayeffi.recipe.models",
    "PARALLEL_CONFIGS": "rayeffi.recipe.parallel",
    "DataParallelConfig": "rayeffi.recipe.parallel",
    "ParallelConfig": "rayeffi.recipe.parallel",
    "DataConfig": "rayeffi.recipe.sections",
    "ModelConfig": "rayeffi.recipe.sections",
    "OptimizerConfig": "rayeffi.recipe.step_options",
    "ScalingConfig": "rayeffi.recipe.sections",
    "ScheduleConfig": "rayeffi.recipe.step_options",
    "SyntheticDataConfig": "rayeffi.recipe.sections",
}

__all__ = sorted(_PUBLIC)

__getattr__ = lazy_getattr("rayeffi.recipe", _PUBLIC, globals())

if TYPE_CHECKING:
    from rayeffi.recipe.load import load_recipe, parse_override, set_dotted, smoke_recipe, validate_recipe
    from rayeffi.recipe.models import GLOBAL_SECTIONS, Recipe, StageConfig, TrainStageConfig, TuneConfig, deep_merge
    from rayeffi.recipe.parallel import PARALLEL_CONFIGS, DataParallelConfig, ParallelConfig
    from rayeffi.recipe.sections import DataConfig, ModelConfig, ScalingConfig, SyntheticDataConfig
    from rayeffi.recipe.step_options import OptimizerConfig, ScheduleConfig
