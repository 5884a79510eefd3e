"""Dense-Sparse-Dense training (Han et al., ICLR 2017), in one place.

- config: ``rayeffi/recipe/dsd.py`` (``DsdConfig``, the phase plan; pure configuration)
- maths: :mod:`.sparsity` (magnitude masks, per-layer targets; pure functions)
- adapter: :mod:`.technique` (``DenseSparseDense``: the step's hooks, phase by phase)
- driver: :mod:`.summary` (the stage's per-phase rounds for ``summary.json``)
- report: :mod:`.report` (phase and pruning-histogram plots)
"""

from rayeffi.techniques.base import TechniquePlugin
from rayeffi.techniques.dsd.summary import summarise
from rayeffi.techniques.dsd.technique import DenseSparseDense

PLUGIN = TechniquePlugin(build=lambda config, info: DenseSparseDense(config), summarise=summarise)

__all__ = ["PLUGIN", "DenseSparseDense"]
