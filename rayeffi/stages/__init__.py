"""Stage runners: driver-side code that turns one stage config into a Ray run."""

from __future__ import annotations

from typing import Callable

from rayeffi.recipe.models import StageConfig
from rayeffi.stages.base import Artifact, StageContext, StageResult
from rayeffi.stages.dsd import run_dsd_stage
from rayeffi.stages.train import run_train_stage

StageRunner = Callable[[StageConfig, StageContext], StageResult]

STAGE_RUNNERS: dict[str, StageRunner] = {"train": run_train_stage, "dsd": run_dsd_stage}
"""Stage kind -> runner. ``distill`` joins here."""

__all__ = ["STAGE_RUNNERS", "Artifact", "StageContext", "StageResult", "StageRunner"]
