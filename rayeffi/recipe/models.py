"""The recipe: global sections plus an ordered list of stages.

A stage inherits every global section and may override any key of it; the merge
happens before validation, so each :class:`StageConfig` the rest of rayeffi sees is
complete and needs no lookups into the recipe. Stage kinds resolve through one
tagged union, :data:`AnyStageConfig`; a new kind adds its config class there.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, PositiveInt, Tag, field_validator, model_validator

from rayeffi.recipe.sections import (
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    ParallelConfig,
    Precision,
    ScalingConfig,
    Section,
)

GLOBAL_SECTIONS = ("data", "model", "optimizer", "scaling", "precision", "parallel")
"""Recipe sections a stage inherits and may override."""

_STAGE_NAME = re.compile(r"^[A-Za-z][\w-]*$")


class SearchDomain(Section):
    """One dimension of a Tune search space: exactly one of the keys is set."""

    choice: list[Any] | None = None
    grid: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchDomain:
        set_keys = [k for k, v in self.__dict__.items() if v is not None]
        if len(set_keys) != 1:
            raise ValueError("a search dimension sets exactly one of choice, grid, uniform, loguniform, randint")
        bounds = self.uniform or self.loguniform or self.randint
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"search bounds must be [low, high] with low < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be > 0")
        return self


class SchedulerConfig(Section):
    """Early stopping of bad trials (ASHA, Li et al. 2020)."""

    name: Literal["fifo", "asha"] = "fifo"
    grace_period: PositiveInt = 1
    reduction_factor: float = Field(2.0, gt=1.0)


class TuneConfig(Section):
    """Runs a stage as a Ray Tune experiment; each trial is one Ray Train run."""

    search_space: dict[str, SearchDomain]
    """Dotted stage key (``optimizer.lr``, ``epochs``, ...) -> search dimension."""
    num_samples: PositiveInt = 4
    metric: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    scheduler: SchedulerConfig = SchedulerConfig()
    max_concurrent_trials: PositiveInt = 1


class StageConfig(Section):
    """What every stage kind has: a name, its resolved global sections, and how to start."""

    name: str
    kind: str
    epochs: PositiveInt = 10
    seed: int = 0
    init_from: str | None = None
    """``previous`` (the artifact of the stage before) or a checkpoint path: load its
    model weights before training. Only the model passes; optimizer state starts fresh."""
    tune: TuneConfig | None = None

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    scaling: ScalingConfig = ScalingConfig()
    precision: Precision = "fp32"
    parallel: ParallelConfig = ParallelConfig()

    @field_validator("name")
    @classmethod
    def _name_is_a_key(cls, name: str) -> str:
        if not _STAGE_NAME.match(name):
            raise ValueError(f"stage name {name!r} must start with a letter and use letters, digits, '_' or '-'")
        return name

    @model_validator(mode="after")
    def _batch_splits_evenly(self) -> StageConfig:
        num_workers = max(self.scaling.num_workers, 1)
        if self.data.batch_size % num_workers:
            raise ValueError(
                f"data.batch_size {self.data.batch_size} does not split evenly over "
                f"scaling.num_workers {num_workers}: use a multiple of {num_workers}"
            )
        if self.data.batch_size < num_workers:
            raise ValueError(f"data.batch_size must be at least scaling.num_workers ({num_workers})")
        if self.tune is not None and self.scaling.num_workers == 0:
            raise ValueError(
                "a stage with a tune block runs each trial as a Ray Train run, which reports to Tune "
                "from its workers: set scaling.num_workers >= 1 (local mode has no workers)"
            )
        return self


class TrainStageConfig(StageConfig):
    """``kind: train``: one data-parallel Ray Train run of plain supervised training."""

    kind: Literal["train"] = "train"


def _stage_kind(stage: Any) -> Any:
    return stage.get("kind") if isinstance(stage, dict) else getattr(stage, "kind", None)


AnyStageConfig = Annotated[
    Union[Annotated[TrainStageConfig, Tag("train")]],
    Discriminator(_stage_kind),
]
"""A stage, validated by the config class its ``kind`` names. ``distill`` and ``dsd`` join here."""

STAGE_KINDS = ("train",)


class Recipe(Section):
    """A whole recipe, validated once. ``stages`` hold fully merged configs."""

    name: str = "recipe"
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    scaling: ScalingConfig = ScalingConfig()
    precision: Precision = "fp32"
    parallel: ParallelConfig = ParallelConfig()
    stages: tuple[AnyStageConfig, ...] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _merge_globals_into_stages(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list):
            return raw
        stages = [_resolve_stage(raw, stage) for stage in raw["stages"]]
        return {**raw, "stages": stages}

    @model_validator(mode="after")
    def _stage_names_and_links(self) -> Recipe:
        seen: set[str] = set()
        for index, stage in enumerate(self.stages):
            if stage.name in seen:
                raise ValueError(f"stage name {stage.name!r} is used twice: stage names must be unique")
            seen.add(stage.name)
            if stage.init_from == "previous" and index == 0:
                raise ValueError(
                    f"stage {stage.name!r} has init_from: previous but is the first stage: "
                    "remove init_from or give a checkpoint path"
                )
        return self

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)


def _resolve_stage(raw: dict[str, Any], stage: Any) -> Any:
    """Deep-merge the global sections under one raw stage (validation comes after)."""
    if not isinstance(stage, dict):
        return stage
    merged = dict(stage)
    for section in GLOBAL_SECTIONS:
        if section in raw:
            merged[section] = deep_merge(raw[section], stage.get(section))
    merged.setdefault("seed", raw.get("seed", 0))
    return merged


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` on top of ``base``: mappings merge key by key, anything else replaces."""
    if override is None:
        return base
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = deep_merge(base.get(key), value)
        return out
    return override
