"""The recipe: global sections plus an ordered list of stages.

A stage inherits every global section and may override any key of it; the merge
happens before validation, so each :class:`StageConfig` the rest of rayeffi sees is
complete and needs no lookups into the recipe. Stage kinds resolve through one
tagged union, :data:`AnyStageConfig`; a new kind adds its config class there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Discriminator, Field, PrivateAttr, Tag, model_validator

from rayeffi.recipe.kinds import DistillStageConfig, DsdStageConfig, TrainStageConfig
from rayeffi.recipe.parallel import DataParallelConfig, ParallelConfig
from rayeffi.recipe.sections import DataConfig, ModelConfig, Precision, ScalingConfig, Section, TaskConfig
from rayeffi.recipe.speed import ActivationCheckpointing, Compile
from rayeffi.recipe.step_options import OptimizerConfig
from rayeffi.recipe.stage import SearchDomain, StageConfig, TuneConfig  # noqa: F401  (re-exported)
from rayeffi.recipe.tracking import TrackingConfig

GLOBAL_SECTIONS = ("task", "data", "model", "optimizer", "scaling", "precision", "parallel", "compile",
                   "activation_checkpointing")
"""Recipe sections a stage inherits and may override."""

def _stage_kind(stage: Any) -> Any:
    return stage.get("kind") if isinstance(stage, dict) else getattr(stage, "kind", None)


AnyStageConfig = Annotated[
    Union[
        Annotated[TrainStageConfig, Tag("train")],
        Annotated[DistillStageConfig, Tag("distill")],
        Annotated[DsdStageConfig, Tag("dsd")],
    ],
    Discriminator(_stage_kind),
]
"""A stage, validated by the config class its ``kind`` names."""

STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    "train": TrainStageConfig,
    "distill": DistillStageConfig,
    "dsd": DsdStageConfig,
}
"""Stage kind -> config class (the same classes as :data:`AnyStageConfig`)."""
STAGE_KINDS = tuple(STAGE_CONFIGS)


class Recipe(Section):
    """A whole recipe, validated once. ``stages`` hold fully merged configs."""

    name: str = "recipe"
    seed: int = 0
    task: TaskConfig = TaskConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    scaling: ScalingConfig = ScalingConfig()
    precision: Precision = "fp32"
    parallel: ParallelConfig = DataParallelConfig()
    compile: Compile = None
    """``torch.compile`` every stage's model (a stage may override it; recipe/speed.py)."""
    activation_checkpointing: ActivationCheckpointing = None
    """Checkpoint every stage's model blocks (a stage may override it; recipe/speed.py)."""
    stages: tuple[AnyStageConfig, ...] = Field(min_length=1)
    tracking: TrackingConfig = TrackingConfig()
    """Where epoch metrics go besides summary.json (recipe/tracking.py); not inherited by stages."""
    _folders: tuple[str, ...] = PrivateAttr(default=())

    @property
    def folders(self) -> tuple[str, ...]:
        """Where its relative paths were found and its modules import from: the recipe file's
        folder then the current one (``recipe/paths.py``; set by ``load_recipe``)."""
        return self._folders or (str(Path.cwd()),)

    def __eq__(self, other: object) -> bool:
        # the same recipe read from a file or given as a dict is equal: where it was found is not part of it
        return type(other) is type(self) and self.__dict__ == other.__dict__

    @model_validator(mode="before")
    @classmethod
    def _merge_globals_into_stages(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list):
            return raw
        stages = [_resolve_stage(raw, stage) for stage in raw["stages"]]
        return {**raw, "stages": [_teacher_models(stage, stages) for stage in stages]}

    @model_validator(mode="after")
    def _stage_names_and_links(self) -> Recipe:
        seen: set[str] = set()
        for index, stage in enumerate(self.stages):
            if stage.name in seen:
                raise ValueError(f"stage name {stage.name!r} is used twice: stage names must be unique")
            seen.add(stage.name)
            init_path = stage.init_from.path if stage.init_from else None
            if init_path == "previous" and index == 0:
                raise ValueError(
                    f"stage {stage.name!r} has init_from: previous but is the first stage: "
                    "remove init_from or give a checkpoint path"
                )
            later = {s.name for s in self.stages[index:]}
            if init_path in later:
                raise ValueError(
                    f"stage {stage.name!r} has init_from: {init_path}, which does not run before it: "
                    "name an earlier stage"
                )
            earlier = {s.name for s in self.stages[:index]}
            teachers = [t for config in stage.technique_configs for t in getattr(config, "teachers", ())]
            for teacher in teachers:
                if teacher.stage is not None and teacher.stage not in earlier:
                    raise ValueError(
                        f"stage {stage.name!r}: teacher {teacher.stage!r} is not an earlier stage: "
                        "name a stage that runs before it, or give {checkpoint: PATH, model: {...}}"
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


def unmerged(recipe: Recipe) -> dict[str, Any]:
    """``recipe`` as a raw dict again, each stage keeping only what differs from the globals.

    A validated recipe's stages hold the merged sections; a global ``--set`` (or a model
    builder) applied to that dict would not reach them. Here it does, as for a file. A
    teacher named by stage gives back its model config, which comes from that stage again.
    """
    raw = recipe.model_dump()
    raw["stages"] = [_own_keys(raw, stage) for stage in raw["stages"]]
    return raw


def _own_keys(raw: dict[str, Any], stage: dict[str, Any]) -> dict[str, Any]:
    own = {key: value for key, value in stage.items() if key not in (*GLOBAL_SECTIONS, "seed")}
    for key in (*GLOBAL_SECTIONS, "seed"):
        difference = _difference(stage.get(key), raw.get(key))
        if difference is not _SAME:
            own[key] = difference
    own["techniques"] = list(own.get("techniques", ()))  # a list, as _teacher_models reads it
    for config in [own.get("distill"), *own["techniques"]]:
        if isinstance(config, dict) and config.get("teachers"):
            config["teachers"] = [{**teacher, "model": None} if teacher.get("stage") is not None else teacher
                                  for teacher in config["teachers"]]
    return own


_SAME = object()


def _difference(value: Any, base: Any) -> Any:
    """What ``value`` sets on top of ``base`` (:func:`deep_merge` of the two gives ``value`` back)."""
    if value == base:
        return _SAME
    if not (isinstance(value, dict) and isinstance(base, dict)):
        return value
    return {key: item for key, item in ((k, _difference(v, base.get(k))) for k, v in value.items()) if item is not _SAME}


def _teacher_models(stage: Any, stages: list[Any]) -> Any:
    """Give each teacher named by stage that stage's (merged) model config, in the
    ``distill:`` block and in every ``{name: distill}`` item of ``techniques``."""
    if not isinstance(stage, dict):
        return stage
    models = {s.get("name"): s.get("model") or {} for s in stages if isinstance(s, dict)}
    stage = dict(stage)
    if stage.get("kind") == "distill" and isinstance(stage.get("distill"), dict):
        stage["distill"] = _with_teacher_models(stage["distill"], models)
    if isinstance(stage.get("techniques"), list):
        stage["techniques"] = [
            _with_teacher_models(item, models) if isinstance(item, dict) and item.get("name") == "distill" else item
            for item in stage["techniques"]
        ]
    return stage


def _with_teacher_models(distill: dict[str, Any], models: dict[str, Any]) -> dict[str, Any]:
    teachers = distill.get("teachers")
    if isinstance(teachers, str):
        teachers = [teachers]
    if not isinstance(teachers, list):
        return distill
    resolved = []
    for teacher in teachers:
        if isinstance(teacher, str):
            teacher = {"stage": teacher}
        if isinstance(teacher, dict) and teacher.get("stage") in models and teacher.get("model") is None:
            teacher = {**teacher, "model": models[teacher["stage"]]}
        resolved.append(teacher)
    return {**distill, "teachers": resolved}


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
