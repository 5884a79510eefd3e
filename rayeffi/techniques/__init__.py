"""Techniques: the pluggable list of the step (the precision policies are ``rayeffi/precision/``).

A technique is a folder here (its maths, its adapter, its driver-side prepare/summarise,
its report) plus its config in ``rayeffi/recipe/``, registered once below.
"""

from __future__ import annotations

from rayeffi.data.info import DatasetInfo
from rayeffi.techniques import distill, dsd
from rayeffi.techniques.base import DriverInputs, Prepared, Technique, TechniquePlugin
from rayeffi.techniques.distill import Distillation
from rayeffi.techniques.dsd import DenseSparseDense

TECHNIQUES: dict[str, TechniquePlugin] = {
    "distill": distill.PLUGIN,
    "dsd": dsd.PLUGIN,
}
"""Technique name (the ``name`` of a ``techniques:`` item) -> its code."""


def build_techniques(stage, info: DatasetInfo) -> list[Technique]:
    """The techniques a stage runs, in the order the step applies them."""
    return [TECHNIQUES[config.name].build(config, info) for config in stage.technique_configs]


__all__ = [
    "DenseSparseDense", "Distillation", "DriverInputs", "Prepared", "TECHNIQUES", "Technique", "TechniquePlugin",
    "build_techniques",
]
