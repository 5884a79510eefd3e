"""Stage runners: driver-side code that turns one stage config into a Ray run."""

from __future__ import annotations

from typing import Callable

from rayeffi.recipe.models import StageConfig
from rayeffi.data.info import DatasetInfo
from rayeffi.stages.base import Artifact, StageContext, StageResult
from rayeffi.stages.distill import check_distill_stage, run_distill_stage
from rayeffi.stages.dsd import run_dsd_stage
from rayeffi.stages.train import run_train_stage

StageRunner = Callable[[StageConfig, StageContext], StageResult]

STAGE_RUNNERS: dict[str, StageRunner] = {
    "train": run_train_stage,
    "distill": run_distill_stage,
    "dsd": run_dsd_stage,
}
"""Stage kind -> runner."""

STAGE_CHECKS: dict[str, Callable[[StageConfig, DatasetInfo], None]] = {"distill": check_distill_stage}
"""Stage kind -> its own checks beyond the common ones, run on the driver before Ray starts."""

__all__ = ["STAGE_CHECKS", "STAGE_RUNNERS", "Artifact", "StageContext", "StageResult", "StageRunner"]
