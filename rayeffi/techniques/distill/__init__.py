"""Knowledge distillation (Hinton et al. 2015; FitNets hints, Romero et al. 2015), in one place.

- config: :mod:`.config` (``DistillConfig``; pure configuration)
- maths: :mod:`.losses` (KD, soft targets, ensembles, hints; pure functions)
- adapter: :mod:`.technique` (``Distillation``: frozen teachers in the step, hint adapters)
- driver: :mod:`.driver` (checks before Ray starts, teachers' checkpoints, the cache job)
  and :mod:`.soft_labels` (the teacher-logit cache, one Ray Data pass)
- plugin: :mod:`.plugin` (``PLUGIN``: what the driver and the workers call)
"""

from __future__ import annotations

from rayeffi._lazy import lazy_getattr

_PUBLIC = {"DistillConfig": "rayeffi.techniques.distill.config", "Distillation": "rayeffi.techniques.distill.technique",
           "PLUGIN": "rayeffi.techniques.distill.plugin", "freeze": "rayeffi.techniques.distill.technique",
           "load_teachers": "rayeffi.techniques.distill.technique"}

__all__ = sorted(_PUBLIC)

__getattr__ = lazy_getattr("rayeffi.techniques.distill", _PUBLIC, globals())  # the config reads without torch
