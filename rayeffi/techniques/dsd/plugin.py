"""DSD's entry in the technique registry: what the driver and the workers call."""

from rayeffi.techniques.base import TechniquePlugin
from rayeffi.techniques.dsd.summary import summarise
from rayeffi.techniques.dsd.technique import DenseSparseDense

PLUGIN = TechniquePlugin(build=lambda config, info: DenseSparseDense(config), summarise=summarise)
