"""``parallel: {strategy: param_server, ...}``: not available in this build yet."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from rayeffi.recipe.strategy import StrategyConfig


class ParamServerConfig(StrategyConfig):
    """Placeholder until the param_server strategy lands: rejected at load time."""

    strategy: Literal["param_server"] = "param_server"

    @model_validator(mode="after")
    def _not_available(self) -> ParamServerConfig:
        raise ValueError("parallel.strategy 'param_server' is not available in this build: use data_parallel")
