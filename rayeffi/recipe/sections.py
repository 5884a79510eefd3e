"""The global recipe sections: data, model, scaling, precision (optimizer and early stopping:
recipe/step_options.py; parallel: recipe/parallel.py).

Every section is a frozen pydantic model that rejects unknown keys, so a typo in a
recipe fails at load time instead of silently training with a default. A stage may
override any of these sections; see :mod:`rayeffi.recipe.stages`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    PlainSerializer,
    SerializationInfo,
    field_validator,
    model_serializer,
    model_validator,
)


class Section(BaseModel):
    """Base of every recipe model: frozen, typed, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SyntheticDataConfig(Section):
    """A Gaussian-blob classification set of any size, written to Parquet shards."""

    num_samples: PositiveInt = 4096
    """Training rows; the validation split adds a fifth of that."""
    num_features: PositiveInt = 64
    num_classes: int = Field(10, ge=2)
    num_shards: PositiveInt = 4
    """Parquet files the training rows are spread over (Ray Data reads them in parallel)."""


_USER_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
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


class AugmentConfig(Section):
    """Seeded image augmentation on the workers (``data/augment.py``); images only
    (``data.image_shape``, or the built-in digits and MNIST)."""

    crop_padding: int = Field(0, ge=0)
    """Training: a random crop of the original size from the image zero-padded by this
    many pixels on each side (0: off)."""
    horizontal_flip: bool = False
    """Training: flip each image left-right with probability 0.5 (not for digits: a
    mirrored 2 is not a 2)."""
    mean: tuple[float, ...] | None = None
    """Per-channel mean subtracted from training and validation images alike."""
    std: tuple[PositiveFloat, ...] | None = None
    """Per-channel standard deviation the images are divided by (with ``mean``)."""

    @model_validator(mode="after")
    def _mean_with_std(self) -> AugmentConfig:
        if (self.mean is None) != (self.std is None) or (self.mean and len(self.mean) != len(self.std)):
            raise ValueError("data.augment.mean and std go together, one number per channel each")
        return self

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.horizontal_flip or self.mean is not None)


class DataConfig(Section):
    """Where the examples come from and how they are batched."""

    dataset: Literal["digits", "mnist", "text", "parquet", "image_folder", "synthetic"] = "digits"
    """``digits``: the 8x8 handwritten digits shipped with rayeffi (1,797 samples).
    ``mnist``: 5,000 real 28x28 MNIST digits shipped with rayeffi (4,000 train / 1,000
    validation). ``text``: a public-domain English book shipped with rayeffi, as byte
    tokens (vocabulary 256) in windows of ``seq_len`` (``task: language_modeling``).
    ``parquet``: your own Parquet file or directory (``path``); a feature column of
    encoded image bytes (PNG, JPEG, ...) is decoded on the workers. ``image_folder``: a
    directory of image files, one subfolder per class (``path``; torchvision's ImageFolder
    layout). ``synthetic``: generated."""
    path: str | None = None
    """Parquet file or directory with the training rows (``dataset: parquet`` only)."""
    val_path: str | None = None
    """Parquet held-out rows; without it ``val_fraction`` of ``path`` is held out."""
    test_path: str | None = None
    """Parquet held-out test rows (any dataset, with the training data's columns): after the last
    stage, its model is scored on them once (``test_loss``, ``test_accuracy``, ...: ``summary.json``'s
    ``test``); never seen in training or in choosing a Tune trial."""
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    feature_column: str | None = None
    """A fixed-size list (or list) column of floats; for per-token tasks a ``list<int>``
    column of token ids (any length: padded or cut to ``seq_len``). Left out: the
    ``features`` column where there is one, otherwise the table's numeric scalar columns
    (``feature_columns``)."""
    feature_columns: tuple[str, ...] | None = None
    """Rows of numbers given as scalar columns (``f0 ... f11``): the integer, float or boolean
    columns stacked, in this order, into each row's float32 features; names or fnmatch globs
    (``"f*"``: its matches in the table's order). Left out (and no ``features`` column): every
    numeric scalar column except the label and ``exclude_columns``, in the table's order."""
    exclude_columns: tuple[str, ...] = ()
    """Scalar columns (names or globs) that are not features: ids, timestamps, leaks."""
    label_column: str = "label"
    """An integer class column, values in ``[0, num_classes)``; a float (or float list)
    column for regression; a ``list<int>`` column of per-token labels for token
    classification (optional for language modeling: the inputs shifted by one without it)."""
    seq_len: PositiveInt | None = None
    """Token sequences (per-token tasks; ``classification`` on a ``list<int>`` column whose rows
    differ in length, or any ``list<int>`` column once this is set): tokens per row. Shorter rows
    are padded at the end with ``pad_token_id`` (the attention mask is 0 there, and padding
    scores nothing); longer ones are cut (``truncate``). Default: the longest row (``text``: 64)."""
    truncate: bool = True
    """Token sequences: cut rows longer than ``seq_len``; false makes a longer row an error."""
    pad_token_id: int = Field(0, ge=0)
    """Token sequences: the token id padding positions hold (they are never scored)."""
    vocab_size: PositiveInt | None = None
    """Token sequences: token ids lie in ``[0, vocab_size)``; inferred from the largest id
    (``text``: 256 bytes)."""
    inputs: dict[str, str] = {}
    """The model's named inputs: ``{argument: column}``, each numeric column passed to the
    model's ``forward`` by that keyword (a number per row, or a list: in token data padded
    with 0 to ``seq_len``). Token data carry ``attention_mask`` already, and a
    ``token_type_ids`` column is passed where the forward takes it (``models/inputs.py``)."""
    num_classes: int | None = Field(None, ge=2)
    """Parquet data only; inferred from the labels when left out."""
    image_shape: tuple[PositiveInt, PositiveInt, PositiveInt] | None = None
    """``[channels, height, width]`` of each feature row, for convolutional models on
    Parquet data (the built-in digits are ``[1, 8, 8]``)."""
    batch_size: PositiveInt = 64
    """Global batch size: split evenly across the data-parallel workers."""
    max_samples: PositiveInt | None = None
    """Use at most this many training rows (``--smoke`` sets it)."""
    max_val_samples: PositiveInt | None = None
    """Validate on at most this many rows (``--smoke`` sets it)."""
    shuffle: bool = True
    in_memory_mb: float = Field(256.0, ge=0.0)
    """A worker's shard up to this many MiB (estimated) is read once, kept as tensors and
    shuffled in memory each epoch; a larger one streams through Ray Data every epoch
    with a local shuffle buffer (0: always stream)."""
    augment: AugmentConfig = AugmentConfig()
    """Seeded image augmentation on the workers: random crops and flips for training,
    per-channel normalisation for both splits (off by default)."""
    synthetic: SyntheticDataConfig = SyntheticDataConfig()
    transform: str | None = None
    """``package.module:function`` applied to each batch of your rows before anything reads them:
    a pyarrow Table in, a pyarrow Table, a dict of columns or a pandas DataFrame out, with as many
    rows (e.g. a ``text`` column tokenised into ``input_ids``). The driver applies it once to
    ``path`` and ``val_path`` and keeps the result under ``OUT/data/transformed/`` (``dataset:
    parquet`` only; ``data/transform.py``)."""

    @field_validator("inputs")
    @classmethod
    def _inputs_are_arguments(cls, inputs: dict[str, str]) -> dict[str, str]:
        for argument in inputs:
            if not argument.isidentifier():
                raise ValueError(f"data.inputs: {argument!r} is not an argument name: give the keyword the "
                                 "model's forward takes, e.g. token_type_ids")
            if argument in ("input_ids", "pixel_values"):
                raise ValueError(f"data.inputs.{argument}: the feature column is passed as {argument}: set "
                                 "data.feature_column instead")
        return inputs

    @property
    def in_memory_bytes(self) -> int:
        """``in_memory_mb`` in bytes: the budget a worker's shard is measured against."""
        return int(self.in_memory_mb * 2**20)

    @model_validator(mode="after")
    def _one_way_to_name_features(self) -> DataConfig:
        if self.feature_column is not None and (self.feature_columns is not None or self.exclude_columns):
            which = "data.feature_columns" if self.feature_columns is not None else "data.exclude_columns"
            raise ValueError(f"data.feature_column (one list column) and {which} (scalar columns) both given: "
                             "keep one")
        if self.dataset != "parquet" and (self.feature_columns is not None or self.exclude_columns):
            raise ValueError(f"data.feature_columns and data.exclude_columns choose columns of a Parquet table, not "
                             f"of dataset {self.dataset!r}: remove them or set data.dataset=parquet")
        if self.feature_columns == ():
            raise ValueError("data.feature_columns is empty: name the feature columns, or leave it out to take "
                             "every numeric column")
        if self.label_column in (self.feature_columns or ()):
            raise ValueError(f"data.feature_columns lists {self.label_column!r}, the label column: a model must not "
                             "see its label; remove it from data.feature_columns")
        return self

    @model_validator(mode="after")
    def _paths_match_dataset(self) -> DataConfig:
        if self.dataset == "parquet" and self.path is None:
            raise ValueError("data.dataset 'parquet' needs data.path: a Parquet file or directory")
        if self.dataset == "image_folder" and self.path is None:
            raise ValueError("data.dataset 'image_folder' needs data.path: a folder with one subfolder per class")
        if self.transform is not None and not _USER_FUNCTION.match(self.transform):
            raise ValueError(f"data.transform {self.transform!r} is not a 'package.module:function' path")
        if self.transform is not None and self.dataset != "parquet":
            raise ValueError(f"data.transform reads your Parquet rows, not dataset {self.dataset!r}: "
                             "set data.dataset=parquet or remove data.transform")
        if self.dataset not in ("parquet", "image_folder") and (self.path or self.val_path):
            raise ValueError(
                f"data.path and data.val_path are only read for dataset 'parquet', "
                f"not {self.dataset!r}: remove them or set data.dataset=parquet"
            )
        return self


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
