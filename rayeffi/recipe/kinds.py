"""The stage kinds: ``train``, and ``distill`` / ``dsd`` as sugar for a one-item techniques list.

``kind: distill`` with a ``distill:`` block is a stage whose ``techniques`` list starts with
``{name: distill, ...}``; ``kind: dsd`` with ``dsd:`` likewise. Any stage may carry more
techniques in ``techniques:``, applied in list order after the sugar's.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from rayeffi.techniques.distill.config import DistillConfig
from rayeffi.techniques.dsd.config import DsdConfig
from rayeffi.recipe.stage import StageConfig


class TrainStageConfig(StageConfig):
    """``kind: train``: supervised training, with the techniques its ``techniques`` list names."""

    kind: Literal["train"] = "train"


class DistillStageConfig(StageConfig):
    """``kind: distill``: sugar for a stage whose ``techniques`` list starts with this
    ``distill`` block; the stage's ``model`` is the student."""

    kind: Literal["distill"] = "distill"
    distill: DistillConfig

    @property
    def sugar_techniques(self) -> tuple[DistillConfig, ...]:
        return (self.distill,)

    def smoke_raw(self, raw: dict[str, Any], max_epochs: int) -> dict[str, Any]:
        raw = super().smoke_raw(raw, max_epochs)
        if raw["distill"]["hint_epochs"]:
            raw["epochs"] = max(raw["epochs"], 2)
        raw["distill"] = self.distill.smoke(raw["distill"])
        return raw


class DsdStageConfig(StageConfig):
    """``kind: dsd``: sugar for a stage whose ``techniques`` list starts with this ``dsd`` block.
    The stage's epochs are the sum of its phases (do not set ``epochs``)."""

    kind: Literal["dsd"] = "dsd"
    epochs: None = None  # type: ignore[assignment]
    dsd: DsdConfig

    @property
    def sugar_techniques(self) -> tuple[DsdConfig, ...]:
        return (self.dsd,)

    def smoke_raw(self, raw: dict[str, Any], max_epochs: int) -> dict[str, Any]:
        raw = super().smoke_raw(raw, max_epochs)
        raw["dsd"] = self.dsd.smoke(raw["dsd"])
        return raw

    @model_validator(mode="before")
    @classmethod
    def _epochs_come_from_phases(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("epochs") is not None:
            raise ValueError(
                "a dsd stage's epochs are the sum of its phases: remove 'epochs' and set "
                "dsd.dense_epochs, dsd.sparse_epochs and dsd.redense_epochs"
            )
        return raw
