"""Techniques and precision policies: the pluggable parts of the step."""

from __future__ import annotations

from rayeffi.recipe.models import StageConfig
from rayeffi.techniques.base import Technique
from rayeffi.techniques.precision import FP32, PRECISIONS, Precision, build_precision


def build_techniques(stage: StageConfig) -> list[Technique]:
    """The techniques a stage kind runs, in the order the step applies them.

    ``train`` stages run none; ``distill`` adds its loss, ``dsd`` its masks.
    """
    return []


__all__ = ["FP32", "PRECISIONS", "Precision", "Technique", "build_precision", "build_techniques"]
