"""``parallel: {strategy: intra_layer, ...}``: not available in this build yet."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from rayeffi.recipe.strategy import StrategyConfig


class IntraLayerConfig(StrategyConfig):
    """Placeholder until the intra_layer strategy lands: rejected at load time."""

    strategy: Literal["intra_layer"] = "intra_layer"

    @model_validator(mode="after")
    def _not_available(self) -> IntraLayerConfig:
        raise ValueError("parallel.strategy 'intra_layer' is not available in this build: use data_parallel")
