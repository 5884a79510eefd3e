"""Techniques: the ordered list of the step (the precision policies are ``rayeffi/precision/``).

A technique is a folder here (its config, maths, adapter, driver-side prepare/summarise,
summary, report, export) registered by one line in :mod:`.registry`. Names are imported on
first use (PEP 562), so the recipe layer can read a technique's ``config.py`` without
importing the technique's torch code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayeffi._lazy import lazy_getattr

_PUBLIC = {
    "DenseSparseDense": "rayeffi.techniques.dsd.technique",
    "Distillation": "rayeffi.techniques.distill.technique",
    "DriverInputs": "rayeffi.techniques.base",
    "Prepared": "rayeffi.techniques.base",
    "TECHNIQUES": "rayeffi.techniques.plugins",
    "Technique": "rayeffi.techniques.base",
    "TechniquePlugin": "rayeffi.techniques.base",
    "build_techniques": "rayeffi.techniques.plugins",
}

__all__ = sorted(_PUBLIC)

__getattr__ = lazy_getattr("rayeffi.techniques", _PUBLIC, globals())

if TYPE_CHECKING:
    from rayeffi.techniques.base import DriverInputs, Prepared, Technique, TechniquePlugin
    from rayeffi.techniques.distill.technique import Distillation
    from rayeffi.techniques.dsd.technique import DenseSparseDense
    from rayeffi.techniques.plugins import TECHNIQUES, build_techniques
