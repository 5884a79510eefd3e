"""``kind: dsd``: Dense-Sparse-Dense training (Han et al., "DSD: Dense-Sparse-Dense
Training for Deep Neural Networks", ICLR 2017).

A DSD stage starts from dense weights (an earlier stage's artifact, or a dense phase
it trains itself) and runs rounds of: a **sparse** phase (prune the smallest-magnitude
fraction of each layer once, then train with those weights held at zero) and a
**re-dense** phase (release the pruned weights, which restart from zero, and train
everything at ``lr * redense_lr_factor``). Two rounds of 50% then 25% sparsity:

    dsd: {rounds: [0.5, 0.25]}

This module is pure configuration (no torch): the phase plan is computed here so the
driver, the workers and the report agree on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from rayeffi.recipe.sections import Section


class DsdRound(Section):
    """One sparse + re-dense round; unset epochs and factor come from :class:`DsdConfig`."""

    sparsity: float = Field(ge=0.0, lt=1.0)
    """Fraction of each prunable layer's weights set to zero (0 prunes nothing)."""
    sparse_epochs: PositiveInt | None = None
    redense_epochs: NonNegativeInt | None = None
    redense_lr_factor: float | None = Field(None, gt=0.0, le=1.0)


class DsdConfig(Section):
    """The DSD schedule of one stage: ``dsd: {...}`` of a ``kind: dsd`` stage, or
    ``{name: dsd, ...}`` in any stage's ``techniques`` list."""

    name: Literal["dsd"] = "dsd"
    adds_loss: ClassVar[bool] = False
    """DSD acts on gradients and weights, not on the loss."""
    rounds: tuple[DsdRound, ...] = Field(min_length=1)
    """Per round a sparsity (``[0.5, 0.25]``) or a mapping with per-round settings."""
    dense_epochs: NonNegativeInt = 0
    """Dense epochs trained first by this stage (0: start from ``init_from`` weights)."""
    sparse_epochs: PositiveInt = 3
    redense_epochs: NonNegativeInt = 3
    redense_lr_factor: float = Field(0.1, gt=0.0, le=1.0)
    """Re-dense phases train at ``lr * redense_lr_factor`` (the paper: 0.1)."""
    layer_sparsity: dict[str, float] = {}
    """Parameter-name pattern (fnmatch) -> sparsity used for matching layers in every round."""
    skip: tuple[str, ...] = ()
    """Parameter-name patterns never pruned, beyond biases and normalisation parameters."""
    skip_first_conv: bool = True
    """Leave the first convolution dense (it has few weights and they all matter)."""
    prune_embeddings: bool = False
    """Prune ``nn.Embedding`` tables too (and weights tied to them, such as GPT-2's
    ``lm_head``); off by default: a pruned row is a token the model can no longer see."""

    @field_validator("rounds", mode="before")
    @classmethod
    def _numbers_are_sparsities(cls, rounds: Any) -> Any:
        if isinstance(rounds, (list, tuple)):
            return [{"sparsity": r} if isinstance(r, (int, float)) and not isinstance(r, bool) else r for r in rounds]
        return rounds

    @field_validator("layer_sparsity")
    @classmethod
    def _sparsities_in_range(cls, overrides: dict[str, float]) -> dict[str, float]:
        for pattern, sparsity in overrides.items():
            if not 0.0 <= sparsity < 1.0:
                raise ValueError(f"dsd.layer_sparsity.{pattern} must be in [0, 1), got {sparsity}")
        return overrides


    def fixed_epochs(self) -> int:
        """The stage's epoch count: the sum of the phases."""
        last = dsd_phases(self)[-1]
        return last.first_epoch + last.num_epochs

    def smoke(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Shrink this technique's raw dict for ``--smoke``: one epoch per phase."""
        raw["dense_epochs"] = min(raw["dense_epochs"], 1)
        raw["sparse_epochs"], raw["redense_epochs"] = 1, min(raw["redense_epochs"], 1)
        for item in raw["rounds"]:
            item["sparse_epochs"] = item["redense_epochs"] = None
        return raw

    def check_stage(self, stage: Any) -> None:
        """Checks that need the whole stage; raise ValueError."""
        if stage.init_from is None and self.dense_epochs == 0:
            raise ValueError(
                f"dsd stage {stage.name!r} needs dense weights to prune: set init_from (previous, an earlier "
                "stage or a checkpoint) or dsd.dense_epochs > 0"
            )


@dataclass(frozen=True)
class Phase:
    """A run of epochs with one sparsity rule and one learning-rate factor."""

    kind: Literal["dense", "sparse", "redense"]
    round: int
    """0 for the dense phase, then 1, 2, ..."""
    first_epoch: int
    num_epochs: int
    sparsity: float
    lr_factor: float

    @property
    def epochs(self) -> range:
        return range(self.first_epoch, self.first_epoch + self.num_epochs)


def dsd_phases(config: DsdConfig) -> list[Phase]:
    """The stage's phases in order, with their epoch ranges (0-based)."""
    phases: list[Phase] = []
    epoch = 0
    if config.dense_epochs:
        phases.append(Phase("dense", 0, 0, config.dense_epochs, 0.0, 1.0))
        epoch = config.dense_epochs
    for number, item in enumerate(config.rounds, start=1):
        sparse_epochs = item.sparse_epochs or config.sparse_epochs
        phases.append(Phase("sparse", number, epoch, sparse_epochs, item.sparsity, 1.0))
        epoch += sparse_epochs
        redense_epochs = config.redense_epochs if item.redense_epochs is None else item.redense_epochs
        if redense_epochs:
            factor = item.redense_lr_factor or config.redense_lr_factor
            phases.append(Phase("redense", number, epoch, redense_epochs, 0.0, factor))
            epoch += redense_epochs
    return phases


CONFIG = DsdConfig
"""This technique's recipe section (``techniques/registry.py`` reads it)."""
