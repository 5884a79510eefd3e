"""``kind: distill``: a train run whose step carries the distillation technique.

On the driver this only resolves where the teachers' checkpoints are (an earlier
stage's artifact or a path) and, with ``distill.cache``, has Ray Data write the teacher
soft-label cache once, before the run or the stage's Tune trials start. Every trial
of a tuned stage trains from the same cache.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from rayeffi.data.info import DatasetInfo
from rayeffi.data.ray_datasets import build_ray_datasets
from rayeffi.data.soft_labels import TEACHER_LOGITS, write_soft_labels
from rayeffi.errors import UserError
from rayeffi.models import build_model, check_model
from rayeffi.recipe.distill import DistillStageConfig
from rayeffi.stages.base import StageContext, StageResult
from rayeffi.stages.train import run_train_stage
from rayeffi.techniques.distill import Distillation, freeze

CACHE_DIR = "soft_labels"


def run_distill_stage(stage: DistillStageConfig, context: StageContext) -> StageResult:
    stage = with_teacher_checkpoints(stage, context)
    extra = {"teachers": [teacher.checkpoint for teacher in stage.distill.teachers]}
    if stage.distill.cache:
        start = time.perf_counter()
        context = with_soft_label_cache(stage, context)
        extra["cache"] = {"path": str(context.stage_dir / CACHE_DIR), "wall_s": round(time.perf_counter() - start, 3)}
    result = run_train_stage(stage, context)
    result.extra.update(extra)
    return result


def with_teacher_checkpoints(stage: DistillStageConfig, context: StageContext) -> DistillStageConfig:
    """The stage with every teacher named by stage given that stage's checkpoint."""
    raw = stage.model_dump()
    for teacher in raw["distill"]["teachers"]:
        if teacher["stage"] is not None:
            teacher["checkpoint"] = context.artifacts[teacher["stage"]].checkpoint
    return DistillStageConfig.model_validate(raw)


def with_soft_label_cache(stage: DistillStageConfig, context: StageContext) -> StageContext:
    """Write the cache and return a context whose data source reads it."""
    datasets = build_ray_datasets(context.source, stage.data, stage.seed)
    train_path, val_path = write_soft_labels(
        datasets, stage.distill, context.source.info, stage.precision, context.stage_dir / CACHE_DIR
    )
    source = dataclasses.replace(
        context.source,
        train_path=train_path,
        val_path=val_path,
        feature_column="features",
        label_column="label",
        extra_columns=(TEACHER_LOGITS,),
    )
    return dataclasses.replace(context, source=source)


def check_distill_stage(stage: DistillStageConfig, info: DatasetInfo) -> None:
    """Before Ray starts: teacher files exist, models build, hint paths and shapes fit."""
    key = f"stages.{stage.name}.distill"
    for index, teacher in enumerate(stage.distill.teachers):
        if teacher.stage is None and not Path(teacher.checkpoint).is_file():
            raise UserError(f"{key}.teachers[{index}].checkpoint {teacher.checkpoint} does not exist: "
                            "give a rayeffi checkpoint file or name an earlier stage")
        check_model(teacher.model, info)
    if not stage.distill.hints:
        return
    # a dry run of the technique's setup on freshly built (untrained) models
    student = build_model(stage.model, info)
    teachers = [freeze(build_model(teacher.model, info)) for teacher in stage.distill.teachers]
    technique = Distillation(stage.distill, teachers, info.num_features)
    try:
        technique.setup(student, torch.optim.SGD(student.parameters(), lr=0.0))
    except KeyError as exc:
        path = exc.args[0]
        which = "student" if path in {h.student for h in stage.distill.hints} else "teacher"
        model = student if which == "student" else teachers[0]
        names = ", ".join(name for name, _ in model.named_modules() if name)
        raise UserError(f"{key}.hints: the {which} has no module {path!r}; its modules are: {names}") from None
    except ValueError as exc:
        raise UserError(f"{key}.hints: {exc}") from None
    finally:
        technique.teardown()
