"""``parallel: {strategy: pipeline, ...}``: not available in this build yet."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from rayeffi.recipe.strategy import StrategyConfig


class PipelineConfig(StrategyConfig):
    """Placeholder until the pipeline strategy lands: rejected at load time."""

    strategy: Literal["pipeline"] = "pipeline"

    @model_validator(mode="after")
    def _not_available(self) -> PipelineConfig:
        raise ValueError("parallel.strategy 'pipeline' is not available in this build: use data_parallel")
