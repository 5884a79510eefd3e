"""The ``techniques:`` list of a stage: one config class per technique, tagged by ``name``.

The configs are pure configuration (no torch), so the recipe layer stays below every
technique's code; ``rayeffi/techniques/__init__.py: TECHNIQUES`` maps the same names to
the code (a unit test keeps the two in step).
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag

from rayeffi.recipe.distill import DistillConfig
from rayeffi.recipe.dsd import DsdConfig

TECHNIQUE_CONFIGS: dict[str, type] = {"distill": DistillConfig, "dsd": DsdConfig}
"""Technique name -> its config class (the same classes as :data:`TechniqueConfig`)."""


def _technique_name(value: Any) -> Any:
    return value.get("name") if isinstance(value, dict) else getattr(value, "name", None)


TechniqueConfig = Annotated[
    Union[
        Annotated[DistillConfig, Tag("distill")],
        Annotated[DsdConfig, Tag("dsd")],
    ],
    Discriminator(_technique_name),
]
"""One item of a stage's ``techniques`` list, validated by the class its ``name`` names."""
