"""The one list of techniques: each name and its folder.

Adding a technique is its folder under ``rayeffi/techniques/`` plus one line here. The
folder holds everything of the technique: ``config.py`` (its recipe section, pure
configuration, ending ``CONFIG = TheConfigClass``), ``plugin.py`` (``PLUGIN``, what the
driver and the workers call) and its maths, adapter, summary and report. The recipe layer
reads the configs from here (``recipe/techniques.py``), the code reads the plugins
(``techniques/plugins.py``): no second list to keep in step.
"""

from __future__ import annotations

import importlib

TECHNIQUE_FOLDERS: dict[str, str] = {
    "distill": "rayeffi.techniques.distill",
    "dsd": "rayeffi.techniques.dsd",
}
"""Technique name (the ``name`` of a ``techniques:`` item) -> its folder (package)."""


def config_class(name: str) -> type:
    """The technique's config class (its folder's ``config.CONFIG``)."""
    return importlib.import_module(f"{TECHNIQUE_FOLDERS[name]}.config").CONFIG
