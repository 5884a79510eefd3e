"""Techniques and precision policies: the pluggable parts of the step.

A technique is a folder here (its maths, its adapter, its driver-side prepare/summarise,
its report) plus its config in ``rayeffi/recipe/``, registered once below.
"""

from __future__ import annotations

from rayeffi.data.info import DatasetInfo
from rayeffi.techniques import distill, dsd
from rayeffi.techniques.base import DriverInputs, Prepared, Technique, TechniquePlugin
from rayeffi.techniques.distill import Distillation
from rayeffi.techniques.dsd import DenseSparseDense
from rayeffi.techniques.precision import FP32, PRECISIONS, Precision, build_precision

TECHNIQUES: dict[str, TechniquePlugin] = {
    "distill": distill.PLUGIN,
    "dsd": dsd.PLUGIN,
}
"""Technique name (the ``name`` of a ``techniques:`` item) -> its code."""


def build_techniques(stage, info: DatasetInfo) -> list[Technique]:
    """The techniques a stage runs, in the order the step applies them."""
    return [TECHNIQUES[config.name].build(config, info) for config in stage.technique_configs]


__all__ = [
    "DenseSparseDense", "Distillation", "DriverInputs", "FP32", "PRECISIONS", "Precision", "Prepared", "TECHNIQUES",
    "Technique", "TechniquePlugin", "build_precision", "build_techniques",
]
