"""What every stage kind shares: a name, its resolved sections, its techniques, how it
starts, and Tune.

Stage kinds subclass :class:`StageConfig` (``recipe/kinds.py``: ``train``, and ``distill``
and ``dsd`` as sugar for a one-item techniques list).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_serializer, model_validator

from rayeffi.recipe.compat import check_compatibility
from rayeffi.recipe.parallel import PARALLEL_CONFIGS, DataParallelConfig, ParallelConfig, _strategy_name
from rayeffi.recipe.sections import DataConfig, ModelConfig, Precision, ScalingConfig, Section, TaskConfig
from rayeffi.recipe.speed import ActivationCheckpointing, Compile
from rayeffi.recipe.step_options import EarlyStopConfig, OptimizerConfig, watchable_metrics
from rayeffi.recipe.techniques import TechniqueConfig

DEFAULT_EPOCHS = 10
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
    """Dotted stage key (``optimizer.lr``, ``epochs``, ...) -> search dimension. Nested
    mappings (``{optimizer: {lr: {loguniform: [...]}}}``) are flattened to dotted keys."""
    num_samples: PositiveInt = 4
    metric: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    scheduler: SchedulerConfig = SchedulerConfig()
    max_concurrent_trials: PositiveInt = 1

    @property
    def num_trials(self) -> int:
        """Tune's count: ``num_samples`` runs of every combination of the ``grid`` dimensions."""
        combinations = 1
        for domain in self.search_space.values():
            combinations *= len(domain.grid) if domain.grid is not None else 1
        return self.num_samples * combinations

    @field_validator("search_space", mode="before")
    @classmethod
    def _flatten(cls, space: Any) -> Any:
        if not isinstance(space, dict):
            return space
        flat: dict[str, Any] = {}
        for key, value in space.items():
            is_domain = not isinstance(value, dict) or set(value) & set(SearchDomain.model_fields)
            if is_domain:
                flat[key] = value
            else:
                flat.update({f"{key}.{inner}": v for inner, v in cls._flatten(value).items()})
        return flat


class InitFromConfig(Section):
    """The long form of a stage's ``init_from``: where its starting weights are and how they load.

    ``init_from: PATH`` is ``init_from: {path: PATH}``. Loading is ``rayeffi/weights/``'s:
    every format it reads, the same key matching for every source.
    """

    path: str
    """``previous`` (the stage before), the name of an earlier stage, or a weights file or folder:
    a state_dict file (``.pt``, ``.pth``, ``.bin``; also a dict holding one under ``state_dict``
    or ``model``), a ``.safetensors`` file, a Hugging Face ``save_pretrained`` folder (sharded
    or not) or a rayeffi checkpoint."""
    strict: bool = True
    """``true``: every tensor of the model must be filled and every one of the file used (tied
    weights count as filled), else the run stops before Ray starts, listing what does not fit.
    ``false``: load what fits (names and shapes), print one line saying what was skipped; the
    model's skipped tensors keep their initial values."""
    prefix: str = ""
    """A leading part of the keys that only one side has. The file's (``model.``, DDP's
    ``module.``, ``torch.compile``'s ``_orig_mod.``, or ``bert.`` to take the ``bert.`` part of a
    whole classifier): its keys under the prefix load with it removed, its other keys are left
    out. Else the model's (``bert.`` to load a ``BertModel`` file into a classifier): the file
    fills the model's part under it, the rest keeps its initial values. Without a prefix, a
    ``module.`` or ``_orig_mod.`` on every key of the file is removed."""

    @model_serializer(mode="wrap")
    def _short_form_when_plain(self, handler: Any) -> Any:
        # dumps as the short string when that says it all: summary.json and resume's comparison of
        # recipes read as they did before the long form existed
        data = handler(self)
        return self.path if self.strict and not self.prefix else data


class StageConfig(Section):
    """What every stage kind has: a name, its resolved global sections, and how to start."""

    name: str
    kind: str
    epochs: PositiveInt | None = None
    """Epochs of the stage (default 10); not set where a technique sets them (DSD's phases)."""
    seed: int = 0
    init_from: InitFromConfig | None = None
    """The weights to start from, loaded before training (optimizer state starts fresh):
    ``previous`` (the stage before), the name of an earlier stage, or a weights file or folder
    (a state_dict ``.pt``/``.pth``/``.bin``, ``.safetensors``, a Hugging Face ``save_pretrained``
    folder, a rayeffi checkpoint); or the long form ``{path, strict, prefix}``
    (:class:`InitFromConfig`; the short string is its ``path``)."""
    tune: TuneConfig | None = None
    early_stop: EarlyStopConfig | None = None
    """Stop before ``epochs`` when the stage's metric stops improving (``patience``,
    ``min_delta``, ``metric``); the summary says at which epoch."""
    eval_every_steps: PositiveInt | None = None
    """Also validate every N optimizer steps (counted over the whole stage, not per epoch) within
    an epoch; the driver prints and keeps each as an eval row with its global ``step`` and
    fractional ``epoch`` (``summary.json``: the stage's ``evals``), apart from the epoch history."""
    log_every_steps: int = Field(50, ge=0)
    """Send the training loss, learning rate, loss scale and gradient norm (where the stage clips)
    of every Nth optimizer step (counted over the whole stage) to TensorBoard and MLflow, beside
    the epoch points (0: off); rank 0 sends them without waiting, and nothing is printed."""
    checkpoint_every_steps: PositiveInt | None = None
    """Also checkpoint every N optimizer steps (counted over the whole stage) within an epoch: a
    worker-group restart or ``--resume`` continues that epoch from the next step."""
    techniques: tuple[TechniqueConfig, ...] = ()
    """Techniques the step applies, in list order: mappings with a ``name`` (``distill``,
    ``dsd``) and that technique's keys. Tune addresses an item by position
    (``techniques.0.rounds``)."""

    task: TaskConfig = TaskConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    scaling: ScalingConfig = ScalingConfig()
    precision: Precision = "fp32"
    parallel: ParallelConfig = DataParallelConfig()
    compile: Compile = None
    """``torch.compile`` the model's forward (``true`` or ``{mode, fullgraph}``; see
    :class:`~rayeffi.recipe.speed.CompileConfig`); off by default."""
    activation_checkpointing: ActivationCheckpointing = None
    """Recompute each block's activations in the backward (``true`` or ``{every: k}``; see
    :class:`~rayeffi.recipe.speed.ActivationCheckpointingConfig`); off by default."""

    @property
    def sugar_techniques(self) -> tuple[Any, ...]:
        """The technique a ``kind: distill`` / ``kind: dsd`` stage's block stands for (none here)."""
        return ()

    @property
    def technique_configs(self) -> tuple[Any, ...]:
        """Every technique of the stage, in the order the step applies them."""
        return self.sugar_techniques + self.techniques

    def technique_keys(self):
        """``(recipe key, config)`` of each technique: ``stages.S.distill`` for a kind's block,
        ``stages.S.techniques.N`` for list items (error messages name them so)."""
        for config in self.sugar_techniques:
            yield f"stages.{self.name}.{config.name}", config
        for index, config in enumerate(self.techniques):
            yield f"stages.{self.name}.techniques.{index}", config

    @property
    def data_layout(self):
        """How rows reach the workers (``recipe/strategy.py: DataLayout``), for driver and workers alike."""
        return self.parallel.data_layout(self.data.batch_size, self.scaling.num_workers)

    def with_technique_configs(self, configs) -> StageConfig:
        """This stage with its techniques' configs replaced (after their driver-side ``prepare``)."""
        num_sugar = len(self.sugar_techniques)
        update: dict[str, Any] = {"techniques": tuple(configs[num_sugar:])}
        for config in configs[:num_sugar]:
            update[config.name] = config
        return self.model_copy(update=update)

    @property
    def total_epochs(self) -> int:
        """Epochs the worker loop runs: a technique that fixes them (DSD: its phases), else ``epochs``."""
        fixed = [config.fixed_epochs() for config in self.technique_configs if config.fixed_epochs() is not None]
        return fixed[0] if fixed else (self.epochs or DEFAULT_EPOCHS)

    def smoke_raw(self, raw: dict[str, Any], max_epochs: int) -> dict[str, Any]:
        """Shrink this stage's raw dict to a CI-sized run (``--smoke``)."""
        if not any(config.fixed_epochs() for config in self.technique_configs):
            raw["epochs"] = min(self.total_epochs, max_epochs)
        raw["techniques"] = [config.smoke(item) for config, item in zip(self.techniques, raw["techniques"])]
        return raw

    @model_validator(mode="before")
    @classmethod
    def _tune_metric_of_the_task(cls, raw: Any) -> Any:
        # Tune ranks by val_accuracy by default; a task without accuracy ranks by val_loss (lower is better)
        if not isinstance(raw, dict) or not isinstance(raw.get("tune"), dict) or "metric" in raw["tune"]:
            return raw
        task = raw.get("task")
        name = task.get("name") if isinstance(task, dict) else getattr(task, "name", task)
        if name in ("language_modeling", "token_classification", "regression"):
            return {**raw, "tune": {**raw["tune"], "metric": "val_loss", "mode": raw["tune"].get("mode", "min")}}
        return raw

    @model_validator(mode="before")
    @classmethod
    def _strategy_resolves_raw(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        config = PARALLEL_CONFIGS.get(_strategy_name(raw.get("parallel") or {}))
        return config.resolve_stage_raw(raw) if config else raw

    @field_validator("init_from", mode="before")
    @classmethod
    def _short_init_from(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _name_is_a_key(cls, name: str) -> str:
        if not _STAGE_NAME.match(name):
            raise ValueError(f"stage name {name!r} must start with a letter and use letters, digits, '_' or '-'")
        return name

    @model_validator(mode="after")
    def _techniques_fit(self) -> StageConfig:
        names = [config.name for config in self.technique_configs]
        for name in set(names):
            if names.count(name) > 1:
                raise ValueError(f"technique {name!r} is given {names.count(name)} times: a stage applies each "
                                 "technique once; merge them into one entry")
        fixing = [config.name for config in self.technique_configs if config.fixed_epochs() is not None]
        if fixing and self.epochs is not None:
            raise ValueError(
                f"technique {fixing[0]!r} sets the stage's epochs (the sum of its phases): remove 'epochs' "
                "and set the technique's epoch keys"
            )
        for config in self.technique_configs:
            config.check_stage(self)
        check_compatibility(self)  # one table of strategy x precision x technique (recipe/compat.py)
        return self

    @model_validator(mode="after")
    def _batch_splits_evenly(self) -> StageConfig:
        self.parallel.check_stage(self)  # the strategy's own layout first: its message names its keys
        num_workers = max(self.scaling.num_workers, 1)
        if self.data.batch_size % num_workers:
            raise ValueError(
                f"data.batch_size {self.data.batch_size} does not split evenly over "
                f"scaling.num_workers {num_workers}: use a multiple of {num_workers}"
            )
        if self.data.batch_size < num_workers:
            raise ValueError(f"data.batch_size must be at least scaling.num_workers ({num_workers})")
        return self

    @model_validator(mode="after")
    def _step_options_fit(self) -> StageConfig:
        watchable = watchable_metrics(self.task.name)
        if self.early_stop is not None and self.early_stop.watched(self.task.name) not in watchable:
            raise ValueError(f"early_stop.metric {self.early_stop.metric!r} is not a metric of task "
                             f"{self.task.name!r}: use one of {', '.join(watchable)}")
        accumulate = self.optimizer.accumulate_steps
        rows = self.data_layout.rows_per_read
        if rows % accumulate:
            raise ValueError(f"optimizer.accumulate_steps {accumulate} does not divide the {rows} rows a worker "
                             f"reads a step (data.batch_size / scaling.num_workers): use a divisor of {rows}")
        return self
