"""Knowledge distillation (Hinton et al. 2015; FitNets hints, Romero et al. 2015), in one place.

- config: ``rayeffi/recipe/distill.py`` (``DistillConfig``; pure configuration)
- maths: :mod:`.losses` (KD, soft targets, ensembles, hints; pure functions)
- adapter: :mod:`.technique` (``Distillation``: frozen teachers in the step, hint adapters)
- driver: :mod:`.driver` (checks before Ray starts, teachers' checkpoints, the cache job)
  and :mod:`.soft_labels` (the teacher-logit cache, one Ray Data pass)
"""

from rayeffi.techniques.base import TechniquePlugin
from rayeffi.techniques.distill import driver
from rayeffi.techniques.distill.technique import Distillation, freeze, load_teachers


def _build(config, info) -> Distillation:
    teachers = None if config.cache else load_teachers(config, info)  # the cache brings their logits
    return Distillation(config, teachers, info.num_features)


PLUGIN = TechniquePlugin(build=_build, check=driver.check, prepare=driver.prepare)

__all__ = ["PLUGIN", "Distillation", "freeze", "load_teachers"]
