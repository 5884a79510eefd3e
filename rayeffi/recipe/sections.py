"""The global recipe sections: data, model, scaling, precision (optimizer and early stopping:
recipe/step_options.py; parallel: recipe/parallel.py).

Every section is a frozen pydantic model that rejects unknown keys, so a typo in a
recipe fails at load time instead of silently training with a default. A stage may
override any of these sections; see :mod:`rayeffi.recipe.stages`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    PositiveFloat,
    PositiveInt,
    PlainSerializer,
    SerializationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

# the data section lives in its own module; re-exported here with the others
from rayeffi.recipe.data_section import _USER_FUNCTION, AugmentConfig, DataConfig, SyntheticDataConfig  # noqa: F401
from rayeffi.recipe.section import Section

TASK_NAMES = ("classification", "language_modeling", "token_classification", "regression")
TASK_METRICS = {
    "classification": ("val_accuracy",),
    "language_modeling": ("val_perplexity", "val_token_accuracy", "tokens_per_s"),
    "token_classification": ("val_token_accuracy", "tokens_per_s"),
    "regression": ("val_rmse",),
}
"""What each task adds to an epoch's metrics (``task.py``), headline first."""


class TaskConfig(Section):
    """What the model predicts and how it is scored (``rayeffi/task.py``). A recipe may give
    just the name (``task: language_modeling``) or a mapping."""

    name: Literal["classification", "language_modeling", "token_classification", "regression"] = "classification"
    """``classification``: one class per row (accuracy). ``language_modeling``: a column of
    token-id sequences, labels the inputs shifted by one (perplexity). ``token_classification``:
    a label per token. ``regression``: a float target (or a fixed-size list of them); MSE."""
    ignore_index: int = -100
    """Label of a position that scores nothing (padding; the end of a sequence)."""
    loss: str | None = None
    """``package.module:function`` called ``(logits, targets) -> scalar tensor`` (FP32 logits),
    replacing the task's loss in training and in ``val_loss`` (classification and regression;
    checked on 2 rows before Ray starts)."""
    metrics: tuple[str, ...] = ()
    """``package.module:function`` paths, each called ``(logits, targets)`` on every validation
    batch and returning a number or a dict of numbers, read as a mean over the batch's rows:
    ``val_NAME`` is the row-weighted mean over the whole validation set (``task.py: UserScores``)."""

    @field_validator("loss", "metrics")
    @classmethod
    def _function_paths(cls, value: Any) -> Any:
        for path in [value] if isinstance(value, str) else value or ():
            if not _USER_FUNCTION.match(path):
                raise ValueError(f"{path!r} is not a 'package.module:function' path")
        return value

    @model_validator(mode="after")
    def _user_loss_on_row_tasks(self) -> TaskConfig:
        if self.loss is not None and self.per_token:
            raise ValueError(f"task.loss replaces the loss of a row task (classification, regression), not "
                             f"{self.name!r}, whose loss is a mean over the global batch's real tokens: remove it")
        return self

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, raw: Any) -> Any:
        if isinstance(raw, str):
            return {"name": raw}
        return raw

    @property
    def per_token(self) -> bool:
        return self.name in ("language_modeling", "token_classification")


BUILTIN_MODELS = ("mlp", "cnn", "lm", "lstm_lm")


def qualified_name(builder: Any) -> str:
    """``module:qualname`` of a model builder object (how it shows in messages and ``summary.json``)."""
    module = getattr(builder, "__module__", None) or type(builder).__module__
    name = getattr(builder, "__qualname__", None) or type(builder).__qualname__
    return f"{module}:{name}"


class ModelConfig(Section):
    """Which network to train."""

    name: str = "mlp"
    """``mlp``, ``cnn``, ``lm`` (a decoder-only transformer language model, ``models/lm.py``),
    ``lstm_lm`` (a character-level LSTM language model, ``models/lstm_lm.py``), or ``package.module:function`` returning an ``nn.Module`` (called with ``num_features``,
    ``num_classes``, ``image_shape`` and ``kwargs``; per-token tasks add ``vocab_size``, and
    ``num_features`` is then ``seq_len``)."""
    hidden_sizes: tuple[PositiveInt, ...] = (128, 64)
    """MLP hidden layer widths."""
    channels: tuple[PositiveInt, ...] = (16, 32)
    """CNN convolution channels, one 3x3 conv layer each."""
    d_model: PositiveInt = 64
    """``lm``, ``lstm_lm``: width of the token representations (and of the LSTM's state)."""
    num_layers: PositiveInt = 2
    """``lm``: transformer blocks; ``lstm_lm``: stacked LSTM layers."""
    num_heads: PositiveInt = 4
    """``lm``: attention heads (they must divide ``d_model``)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    kwargs: dict[str, Any] = {}
    """Extra keyword arguments for a user model function."""
    input_dtype: Literal["auto", "float32", "int64"] = "auto"
    """What ``forward`` receives: ``float32`` feature rows, or ``int64`` token ids (the
    features rounded); ``auto``: token ids when the model's first layer is an embedding."""
    builder: Annotated[Any, PlainSerializer(lambda builder: qualified_name(builder), when_used="json-unless-none")] = None
    """A Python object that builds the model (``rayeffi.run(model=...)``, or a dict recipe):
    a function called like a ``module:function`` user model, or an ``nn.Module`` subclass.
    It replaces ``name``, which becomes its qualified name. Pickled with the stage config to
    the workers; left out of JSON (``summary.json`` shows the name)."""

    @model_validator(mode="before")
    @classmethod
    def _builder_names_the_model(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("builder") is None:
            return data
        if not callable(data["builder"]):
            raise ValueError(f"model.builder is a {type(data['builder']).__name__}, not callable: give a function "
                             "(num_features, num_classes, **kwargs) -> nn.Module or an nn.Module subclass")
        return {**data, "name": qualified_name(data["builder"])}

    @model_serializer(mode="wrap")
    def _builder_stays_in_python(self, handler: Any, info: SerializationInfo) -> dict[str, Any]:
        # JSON (summary.json, tracking, resume's comparison) shows the builder by its name only, and
        # a recipe without one dumps exactly as before
        data = handler(self)
        if self.builder is None or info.mode_is_json():
            data.pop("builder", None)
        return data

    @model_validator(mode="after")
    def _known_model(self) -> ModelConfig:
        if self.builder is None and self.name not in BUILTIN_MODELS and not _USER_FUNCTION.match(self.name):
            raise ValueError(
                f"model.name {self.name!r} is neither a built-in model "
                f"({', '.join(BUILTIN_MODELS)}) nor a 'package.module:function' path"
            )
        return self


class ScalingConfig(Section):
    """How many workers, what each one holds, and how failures are handled."""

    num_workers: int = Field(2, ge=0)
    """Data-parallel Ray Train workers; 0 runs the loop in the driver process (local mode)."""
    resources_per_worker: dict[str, float] = {"CPU": 1.0}
    """Ray resources each worker reserves, e.g. ``{CPU: 1}`` or ``{CPU: 4, GPU: 1}``; a mapping
    without ``CPU`` keeps one CPU per worker (``{CPU: 0}`` asks for none)."""
    max_failures: int = Field(0, ge=-1)
    """Restarts of the worker group from the last checkpoint before the stage fails
    (-1: no limit)."""
    start_timeout_s: float = Field(60.0, gt=0)
    """Seconds the cluster has to place the workers (at the start, and again after a node
    left); a try that runs out counts like a failure, so once ``max_failures`` more tries
    have run out the stage ends with one error line instead of waiting for ever
    (``max_failures: -1`` waits for ever)."""
    use_gpu: bool = False
    """One GPU per worker (Ray's ``ScalingConfig(use_gpu=...)``); a ``GPU`` count in
    ``resources_per_worker`` implies it. A worker on a node without CUDA falls back to the CPU."""
    backend: Literal["nccl", "gloo"] | None = None
    """The process-group backend (Ray's ``TorchConfig(backend=...)``); default NCCL with GPUs,
    gloo without. ``gloo`` with ``use_gpu`` keeps collectives on the host (or logical GPUs)."""

    @model_validator(mode="before")
    @classmethod
    def _gpu_count_implies_use_gpu(cls, raw: Any) -> Any:
        # Ray's convention: a GPU count asks for GPUs; leaving use_gpu out must not contradict it
        if isinstance(raw, dict) and "use_gpu" not in raw and (raw.get("resources_per_worker") or {}).get("GPU", 0):
            raw = {**raw, "use_gpu": True}
        # {GPU: 1} (e.g. --set scaling.resources_per_worker.GPU=1) keeps the default CPU per worker
        # rather than reserving none: a worker always needs a CPU to run its loop
        resources = raw.get("resources_per_worker") if isinstance(raw, dict) else None
        if isinstance(resources, dict) and "CPU" not in resources:
            raw = {**raw, "resources_per_worker": {"CPU": 1.0, **resources}}
        return raw

    @model_validator(mode="after")
    def _positive_resources(self) -> ScalingConfig:
        for name, amount in self.resources_per_worker.items():
            if amount < 0:
                raise ValueError(f"scaling.resources_per_worker.{name} must be >= 0, got {amount}")
        if not self.use_gpu and self.resources_per_worker.get("GPU", 0) > 0:
            raise ValueError("scaling.use_gpu is false but scaling.resources_per_worker.GPU asks for GPUs: "
                             "set use_gpu: true or remove the GPU count")
        if self.backend == "nccl" and not self.use_gpu:
            raise ValueError("scaling.backend: nccl needs GPUs: set scaling.use_gpu: true or backend: gloo")
        return self

    @property
    def gpus_per_worker(self) -> float:
        """GPUs each worker reserves (``use_gpu`` alone: 1, as Ray does)."""
        return self.resources_per_worker.get("GPU", 1.0) if self.use_gpu else 0.0

    @property
    def process_group_backend(self) -> str:
        return self.backend or ("nccl" if self.use_gpu else "gloo")


PRECISION_POLICIES = ("fp32", "bf16", "fp16", "fp16-master", "auto")
_LOSS_SCALED = ("fp16", "fp16-master")
_DYNAMIC_KEYS = ("init_scale", "growth_factor", "backoff_factor", "growth_interval")


class PrecisionConfig(Section):
    """The precision policy of the step (Micikevicius et al., "Mixed Precision Training", 2018).

    ``fp32``: everything in float32. ``bf16``: bfloat16 autocast, no loss scaling (bf16
    has float32's exponent range). ``fp16``: float16 autocast over FP32 weights plus
    loss scaling. ``fp16-master``: the paper's recipe, FP16 weights plus an FP32 master
    copy the optimizer updates. A recipe may give just the policy name
    (``precision: bf16``) or a mapping (``precision: {policy: fp16, loss_scale: 1024}``).
    ``auto``: the driver times a few steps of the stage in BF16 (FP16 with dynamic loss
    scaling on a GPU without BF16) against FP32 on the workers' device and runs the reduced
    policy where it is at least 5% faster, FP32 otherwise; ``summary.json`` records the
    choice (``driver/precision_check.py``).
    The loss-scaling keys are left unset (None) unless given, so a dumped config
    validates again; :meth:`scaler_options` fills in the defaults.
    """

    policy: Literal["fp32", "bf16", "fp16", "fp16-master", "auto"] = "fp32"
    loss_scale: Literal["dynamic"] | float | None = None
    """fp16 policies: ``dynamic`` (default: grow x growth_factor after growth_interval
    clean steps, multiply by backoff_factor and skip the step on inf/NaN) or a fixed
    positive scale such as 1024 (the step is still skipped on inf/NaN)."""
    init_scale: PositiveFloat | None = None
    """Dynamic scaling: the first scale (default 65536 = 2^16)."""
    growth_factor: float | None = Field(None, gt=1.0)
    """Dynamic scaling: scale multiplier after growth_interval clean steps (default 2)."""
    backoff_factor: float | None = Field(None, gt=0.0, lt=1.0)
    """Dynamic scaling: scale multiplier on an overflow (default 0.5)."""
    growth_interval: PositiveInt | None = None
    """Dynamic scaling: clean steps before the scale grows (default 2000)."""

    @field_validator("loss_scale", mode="before")
    @classmethod
    def _dynamic_or_positive(cls, value: Any) -> Any:
        if value is None or value == "dynamic":
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
        raise ValueError(f"must be 'dynamic' or a positive number such as 1024, got {value!r}")

    @model_validator(mode="after")
    def _scaling_keys_fit_the_policy(self) -> PrecisionConfig:
        scaling_keys = [key for key in ("loss_scale", *_DYNAMIC_KEYS) if getattr(self, key) is not None]
        if scaling_keys and self.policy not in _LOSS_SCALED:
            raise ValueError(
                f"{scaling_keys[0]} is a loss-scaling option of policies fp16 and fp16-master, "
                f"not {self.policy!r}: remove it or set precision.policy to fp16"
            )
        dynamic_keys = [key for key in _DYNAMIC_KEYS if getattr(self, key) is not None]
        if dynamic_keys and isinstance(self.loss_scale, float):
            raise ValueError(
                f"{dynamic_keys[0]} only applies to loss_scale 'dynamic', not the static "
                f"loss_scale {self.loss_scale:g}: remove it or set precision.loss_scale=dynamic"
            )
        return self

    def scaler_options(self) -> dict[str, Any]:
        """Keyword arguments of the loss-scaling policies, defaults filled in."""
        if self.policy not in _LOSS_SCALED:
            return {}
        options = {"loss_scale": self.loss_scale or "dynamic"}
        options.update({key: getattr(self, key) for key in _DYNAMIC_KEYS if getattr(self, key) is not None})
        return options


def _policy_name_to_mapping(value: Any) -> Any:
    """``precision: bf16`` is short for ``precision: {policy: bf16}``."""
    if isinstance(value, (dict, PrecisionConfig)):
        return value
    if not isinstance(value, str):
        raise ValueError(
            f"must be a policy name ({', '.join(PRECISION_POLICIES)}) or a mapping such as "
            f"{{policy: fp16, loss_scale: dynamic}}, got {value!r}"
        )
    if value not in PRECISION_POLICIES:
        raise ValueError(
            f"unknown precision policy {value!r}: use one of {', '.join(PRECISION_POLICIES)} "
            f"(e.g. --set precision=bf16)"
        )
    return {"policy": value}


Precision = Annotated[PrecisionConfig, BeforeValidator(_policy_name_to_mapping)]
"""The recipe's ``precision`` key: a policy name or a :class:`PrecisionConfig` mapping."""
