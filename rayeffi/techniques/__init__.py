"""Techniques and precision policies: the pluggable parts of the step."""

from __future__ import annotations

from typing import Callable

from rayeffi.data.info import DatasetInfo
from rayeffi.recipe.models import StageConfig
from rayeffi.techniques.base import Technique
from rayeffi.techniques.distill import Distillation, load_teachers
from rayeffi.techniques.dsd import DenseSparseDense
from rayeffi.techniques.precision import FP32, PRECISIONS, Precision, build_precision


def _distillation(stage, info: DatasetInfo) -> list[Technique]:
    teachers = None if stage.distill.cache else load_teachers(stage.distill, info)
    return [Distillation(stage.distill, teachers, info.num_features)]


TECHNIQUES_BY_KIND: dict[str, Callable[[StageConfig, DatasetInfo], list[Technique]]] = {
    "train": lambda stage, info: [],
    "distill": _distillation,
    "dsd": lambda stage, info: [DenseSparseDense(stage.dsd)],
}
"""Stage kind -> the techniques its step runs, in order."""


def build_techniques(stage: StageConfig, info: DatasetInfo) -> list[Technique]:
    """The techniques a stage runs, in the order the step applies them."""
    return TECHNIQUES_BY_KIND[stage.kind](stage, info)


__all__ = [
    "DenseSparseDense", "Distillation", "FP32", "PRECISIONS", "Precision", "Technique", "build_precision",
    "build_techniques",
]
