"""The ``techniques:`` list of a stage: one config class per technique, tagged by ``name``.

The configs live in their techniques' folders (``rayeffi/techniques/NAME/config.py``) and
are pure configuration (no torch); the one list of techniques is
``rayeffi/techniques/registry.py``, which this module and the code
(``techniques/plugins.py``) both read.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag

from rayeffi.techniques.registry import TECHNIQUE_FOLDERS, config_class

TECHNIQUE_CONFIGS: dict[str, type] = {name: config_class(name) for name in TECHNIQUE_FOLDERS}
"""Technique name -> its config class (the same classes as :data:`TechniqueConfig`)."""


def _technique_name(value: Any) -> Any:
    return value.get("name") if isinstance(value, dict) else getattr(value, "name", None)


TechniqueConfig = Annotated[
    Union[tuple(Annotated[config, Tag(name)] for name, config in TECHNIQUE_CONFIGS.items())],
    Discriminator(_technique_name),
]
"""One item of a stage's ``techniques`` list, validated by the class its ``name`` names."""
