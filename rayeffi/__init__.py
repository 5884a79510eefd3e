"""rayeffi: efficient deep-network training recipes on Ray.

The public API: load a recipe, check it, run it (``run``, ``validate``: a path, a dict or a
``Recipe``, and optionally your own model builder), read the trained model back
(``Result``, ``load_model``; see docs/api.md), and the building blocks of the step for use in
your own loop. Everything else is internal and may change.

Names are imported on first use (PEP 562), so ``rayeffi.worker.step``,
``rayeffi.parallel`` and ``rayeffi.techniques`` import on a machine without Ray or
pydantic (the GPU test tier, ``tests/gpu``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayeffi._lazy import lazy_getattr

__version__ = "0.1.0"

_PUBLIC = {
    "DataParallel": "rayeffi.parallel",
    "DistillConfig": "rayeffi.techniques.distill.config",
    "DsdConfig": "rayeffi.techniques.dsd.config",
    "Pipeline": "rayeffi.parallel",
    "Precision": "rayeffi.precision",
    "Prepared": "rayeffi.worker.prepare",
    "Recipe": "rayeffi.recipe",
    "Result": "rayeffi.result",
    "StageConfig": "rayeffi.recipe",
    "Strategy": "rayeffi.parallel",
    "StepParts": "rayeffi.worker.step",
    "Technique": "rayeffi.techniques",
    "TrainingDiverged": "rayeffi.health",
    "UserError": "rayeffi.errors",
    "assemble": "rayeffi.worker.build",
    "load_checkpoint": "rayeffi.checkpoint",
    "load_model": "rayeffi.result",
    "load_recipe": "rayeffi.recipe",
    "prepare": "rayeffi.worker.prepare",
    "run": "rayeffi.api",
    "run_recipe": "rayeffi.driver.run",
    "train_step": "rayeffi.worker.step",
    "validate": "rayeffi.api",
}

__all__ = sorted(_PUBLIC)


__getattr__ = lazy_getattr("rayeffi", _PUBLIC, globals())


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


if TYPE_CHECKING:
    from rayeffi.api import run, validate
    from rayeffi.checkpoint import load_checkpoint
    from rayeffi.errors import UserError
    from rayeffi.health import TrainingDiverged
    from rayeffi.parallel import DataParallel, Pipeline, Strategy
    from rayeffi.recipe import Recipe, StageConfig, load_recipe
    from rayeffi.techniques.distill.config import DistillConfig
    from rayeffi.techniques.dsd.config import DsdConfig
    from rayeffi.result import Result, load_model
    from rayeffi.driver.run import run_recipe
    from rayeffi.techniques import Technique
    from rayeffi.precision import Precision
    from rayeffi.worker.build import assemble
    from rayeffi.worker.prepare import Prepared, prepare
    from rayeffi.worker.step import StepParts, train_step
