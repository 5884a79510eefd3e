"""Techniques and precision policies: the pluggable parts of the step."""

from __future__ import annotations

from typing import Callable

from rayeffi.recipe.models import StageConfig
from rayeffi.techniques.base import Technique
from rayeffi.techniques.dsd import DenseSparseDense
from rayeffi.techniques.precision import FP32, PRECISIONS, Precision, build_precision

TECHNIQUES_BY_KIND: dict[str, Callable[[StageConfig], list[Technique]]] = {
    "train": lambda stage: [],
    "dsd": lambda stage: [DenseSparseDense(stage.dsd)],
}
"""Stage kind -> the techniques its step runs, in order. ``distill`` joins here."""


def build_techniques(stage: StageConfig) -> list[Technique]:
    """The techniques a stage runs, in the order the step applies them."""
    return TECHNIQUES_BY_KIND[stage.kind](stage)


__all__ = ["DenseSparseDense", "FP32", "PRECISIONS", "Precision", "Technique", "build_precision", "build_techniques"]
