"""rayeffi: efficient deep-network training recipes on Ray.

The public API: load a recipe, run it, and the building blocks of the step for use in
your own loop. Everything else is internal and may change.
"""

from rayeffi.errors import UserError
from rayeffi.parallel import DataParallel, Pipeline, Strategy
from rayeffi.recipe import Recipe, StageConfig, load_recipe
from rayeffi.run import run_recipe
from rayeffi.techniques import Precision, Technique
from rayeffi.checkpoint import load_checkpoint
from rayeffi.worker.build import assemble
from rayeffi.worker.step import StepParts, train_step

__version__ = "0.1.0"

__all__ = [
    "DataParallel",
    "Pipeline",
    "Precision",
    "Recipe",
    "StageConfig",
    "Strategy",
    "StepParts",
    "Technique",
    "UserError",
    "assemble",
    "load_checkpoint",
    "load_recipe",
    "run_recipe",
    "train_step",
]
