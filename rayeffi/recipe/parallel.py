"""The recipe's ``parallel`` section: one parallel strategy per stage, chosen by ``strategy``.

Each strategy has its own config class (in its own file) and joins the tagged union
:data:`ParallelConfig`; a mapping without ``strategy`` is data parallelism.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Tag

from rayeffi.recipe.intra_layer import IntraLayerConfig
from rayeffi.recipe.param_server import ParamServerConfig
from rayeffi.recipe.pipeline import PipelineConfig
from rayeffi.recipe.strategy import StrategyConfig


class DataParallelConfig(StrategyConfig):
    """``strategy: data_parallel``: DDP over the Ray Train workers (``scaling.num_workers``)."""

    strategy: Literal["data_parallel"] = "data_parallel"


PARALLEL_CONFIGS: dict[str, type[StrategyConfig]] = {
    "data_parallel": DataParallelConfig,
    "pipeline": PipelineConfig,
    "param_server": ParamServerConfig,
    "intra_layer": IntraLayerConfig,
}
"""``parallel.strategy`` -> its config class (the same classes as :data:`ParallelConfig`)."""


def _strategy_name(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("strategy", "data_parallel")
    return getattr(value, "strategy", None)


ParallelConfig = Annotated[
    Union[
        Annotated[DataParallelConfig, Tag("data_parallel")],
        Annotated[PipelineConfig, Tag("pipeline")],
        Annotated[ParamServerConfig, Tag("param_server")],
        Annotated[IntraLayerConfig, Tag("intra_layer")],
    ],
    Discriminator(_strategy_name),
]
"""The ``parallel`` key of a recipe or stage, validated by the class its ``strategy`` names."""
