"""A model as an ordered list of *units* ``(name, module)`` whose composition is its forward.

The built-in models list their units with a ``pipeline_units()`` method; the pipeline
strategy (``parallel/pipeline_split.py``) cuts such a list into stages. Unit names are the
modules' paths in the model, so a chunk's ``state_dict`` keys are the full model's keys.
"""

from __future__ import annotations

from torch import nn

Unit = tuple[str, nn.Module]


def sequential_units(module: nn.Sequential, prefix: str = "") -> list[Unit]:
    """The leaves of a (nested) ``nn.Sequential`` in order, named by their paths."""
    units: list[Unit] = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            units += sequential_units(child, f"{path}.")
        else:
            units.append((path, child))
    return units
