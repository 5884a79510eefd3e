"""Every registered technique's code (its folder's ``plugin.PLUGIN``), by name."""

from __future__ import annotations

import importlib

from rayeffi.data.info import DatasetInfo
from rayeffi.techniques.base import Technique, TechniquePlugin
from rayeffi.techniques.registry import TECHNIQUE_FOLDERS

TECHNIQUES: dict[str, TechniquePlugin] = {
    name: importlib.import_module(f"{folder}.plugin").PLUGIN for name, folder in TECHNIQUE_FOLDERS.items()
}
"""Technique name (the ``name`` of a ``techniques:`` item) -> its code."""


def build_techniques(stage, info: DatasetInfo) -> list[Technique]:
    """The techniques a stage runs, in the order the step applies them."""
    return [TECHNIQUES[config.name].build(config, info) for config in stage.technique_configs]
