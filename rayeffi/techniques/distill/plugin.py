"""Distillation's entry in the technique registry: what the driver and the workers call."""

from rayeffi.techniques.base import TechniquePlugin
from rayeffi.techniques.distill import driver
from rayeffi.techniques.distill.technique import Distillation, load_teachers


def _build(config, info) -> Distillation:
    teachers = None if config.cache else load_teachers(config, info)  # the cache brings their logits
    return Distillation(config, teachers, info.num_features)


PLUGIN = TechniquePlugin(build=_build, check=driver.check, prepare=driver.prepare)
