"""Dense-Sparse-Dense training (Han et al., ICLR 2017), in one place.

- config: :mod:`.config` (``DsdConfig``, the phase plan; pure configuration)
- maths: :mod:`.sparsity` (magnitude masks, per-layer targets; pure functions)
- adapter: :mod:`.technique` (``DenseSparseDense``: the step's hooks, phase by phase)
- driver: :mod:`.summary` (the stage's per-phase rounds for ``summary.json``)
- report: :mod:`.report` (phase and pruning-histogram plots)
- export: :mod:`.export` and :mod:`.formats` (``rayeffi export``: the last sparse phase as bitmask or CSR)
- plugin: :mod:`.plugin` (``PLUGIN``: what the driver and the workers call)
"""

from __future__ import annotations

from rayeffi._lazy import lazy_getattr

_PUBLIC = {"DenseSparseDense": "rayeffi.techniques.dsd.technique", "DsdConfig": "rayeffi.techniques.dsd.config",
           "PLUGIN": "rayeffi.techniques.dsd.plugin"}

__all__ = sorted(_PUBLIC)

__getattr__ = lazy_getattr("rayeffi.techniques.dsd", _PUBLIC, globals())  # the config reads without torch
