"""Driver side of distillation: checks before Ray starts, teachers' checkpoints, the cache.

``prepare`` runs before the stage's run (and before any of its Tune trials): it gives every
teacher named by stage that stage's checkpoint and, with ``cache: true``, has Ray Data
write the teachers' soft labels once; the stage's data source then reads that cache, so
every trial trains from it without running a teacher.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rayeffi.data.info import DatasetInfo
from rayeffi.errors import UserError
from rayeffi.models import build_model, check_model
from rayeffi.techniques.base import DriverInputs, Prepared
from rayeffi.techniques.distill.technique import Distillation, freeze

if TYPE_CHECKING:
    # pure configuration (pydantic): annotations only, so the step imports without pydantic
    from rayeffi.techniques.distill.config import DistillConfig

CACHE_DIR = "soft_labels"


def prepare(config: DistillConfig, inputs: DriverInputs) -> Prepared:
    config = with_teacher_checkpoints(config, inputs.checkpoints)
    summary: dict[str, Any] = {"teachers": [teacher.checkpoint for teacher in config.teachers]}
    source = inputs.source
    if config.cache:
        start = time.perf_counter()
        source = with_soft_label_cache(config, inputs)
        summary["cache"] = {"path": str(inputs.stage_dir / CACHE_DIR), "wall_s": round(time.perf_counter() - start, 3)}
    return Prepared(config, source, summary)


def with_teacher_checkpoints(config: DistillConfig, checkpoints: dict[str, str]) -> DistillConfig:
    """``config`` with every teacher named by stage given that stage's checkpoint."""
    raw = config.model_dump()
    for teacher in raw["teachers"]:
        if teacher["stage"] is not None:
            teacher["checkpoint"] = checkpoints[teacher["stage"]]
    return type(config).model_validate(raw)


def with_soft_label_cache(config: DistillConfig, inputs: DriverInputs):
    """Write the cache and return a data source that reads it."""
    # Ray Data on the driver only: the step's modules import without Ray
    from rayeffi.data.columns import normalised_layout
    from rayeffi.data.ray_datasets import build_ray_datasets
    from rayeffi.techniques.distill.soft_labels import TEACHER_LOGITS, write_soft_labels

    stage = inputs.stage
    datasets = build_ray_datasets(inputs.source, stage.data, stage.seed)
    train_path, val_path = write_soft_labels(
        datasets, config, inputs.source.info, stage.precision, inputs.stage_dir / CACHE_DIR, stage.scaling.use_gpu
    )
    return dataclasses.replace(
        inputs.source,
        train_path=train_path,
        val_path=val_path,
        feature_column="features",
        label_column="label",
        extra_columns=(*inputs.source.extra_columns, TEACHER_LOGITS),
        # the cache holds normalise's output (features, label), whatever the user's columns were
        layout=normalised_layout(inputs.source.layout, inputs.source.info.num_features),
    )


def check(config: DistillConfig, stage: Any, info: DatasetInfo, key: str) -> None:
    """Before Ray starts: teacher files exist, models build, hint paths and shapes fit."""
    for index, teacher in enumerate(config.teachers):
        if teacher.stage is None and not Path(teacher.checkpoint).is_file():
            raise UserError(f"{key}.teachers[{index}].checkpoint {teacher.checkpoint} does not exist: "
                            "give a rayeffi checkpoint file or name an earlier stage")
        check_model(teacher.model, info)
    if not config.hints:
        return
    # a dry run of the technique's setup on freshly built (untrained) models
    student = build_model(stage.model, info)
    teachers = [freeze(build_model(teacher.model, info)) for teacher in config.teachers]
    technique = Distillation(config, teachers, info.num_features)
    try:
        technique.setup(student, torch.optim.SGD(student.parameters(), lr=0.0))
    except KeyError as exc:
        path = exc.args[0]
        which = "student" if path in {h.student for h in config.hints} else "teacher"
        model = student if which == "student" else teachers[0]
        names = ", ".join(name for name, _ in model.named_modules() if name)
        raise UserError(f"{key}.hints: the {which} has no module {path!r}; its modules are: {names}") from None
    except ValueError as exc:
        raise UserError(f"{key}.hints: {exc}") from None
    finally:
        technique.teardown()


def check_distill_stage(stage: Any, info: DatasetInfo) -> None:
    """Every distillation technique of ``stage`` checked (as ``rayeffi run`` does before Ray starts)."""
    for key, config in stage.technique_keys():
        if config.name == "distill":
            check(config, stage, info, key)
