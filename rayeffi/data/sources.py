"""Finding and checking the Parquet files behind a recipe's ``data`` section.

This runs on the driver with pyarrow alone, before Ray starts, so a missing file, a
missing column or a label out of range is a one-line error instead of a worker crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from rayeffi.data.info import DatasetInfo
from rayeffi.data.synthetic import write_synthetic
from rayeffi.errors import UserError
from rayeffi.recipe.sections import DataConfig

DIGITS_IMAGE_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class DataSource:
    """Checked Parquet paths and the shape of the data in them."""

    train_path: str
    val_path: str | None
    """None: hold out ``val_fraction`` of ``train_path``."""
    info: DatasetInfo
    feature_column: str
    label_column: str
    extra_columns: tuple[str, ...] = ()
    """Fixed-width float list columns of the training rows carried to the workers as
    they are (e.g. cached teacher logits); a batch hands them to the step's techniques."""


def builtin_digits_paths() -> tuple[str, str]:
    """The shipped train/validation split of scikit-learn's 8x8 digits (1,437 / 360 rows)."""
    root = resources.files("rayeffi.data")
    return str(root / "digits_train.parquet"), str(root / "digits_val.parquet")


def resolve_source(config: DataConfig, seed: int, cache_dir: Path) -> DataSource:
    """Turn a ``data`` section into checked Parquet paths (writing synthetic data if asked)."""
    if config.dataset == "digits":
        train, val = builtin_digits_paths()
        return _inspect(train, val, "features", "label", None, DIGITS_IMAGE_SHAPE, config)
    if config.dataset == "synthetic":
        train, val = write_synthetic(config.synthetic, seed, cache_dir)
        return _inspect(train, val, "features", "label", config.synthetic.num_classes, None, config)
    return _inspect(
        config.path, config.val_path, config.feature_column, config.label_column,
        config.num_classes, config.image_shape, config,
    )


def _inspect(train, val, feature_column, label_column, num_classes, image_shape, config) -> DataSource:
    train_table = _open(train, "data.path", feature_column, label_column)
    num_features = _feature_width(train_table, train, feature_column)
    _check_finite(train_table, train, feature_column)
    labels = train_table.to_table(columns=[label_column])[label_column]
    if num_classes is None:
        num_classes = max(int(pc.max(labels).as_py()) + 1, 2)
    _check_labels(labels, train, label_column, num_classes)
    num_train = len(labels)
    if val is not None:
        val_table = _open(val, "data.val_path", feature_column, label_column)
        if _feature_width(val_table, val, feature_column) != num_features:
            raise UserError(f"data.val_path {val}: '{feature_column}' width differs from data.path's {num_features}")
        _check_finite(val_table, val, feature_column)
        val_labels = val_table.to_table(columns=[label_column])[label_column]
        _check_labels(val_labels, val, label_column, num_classes)
        num_val = len(val_labels)
    else:
        num_val = round(num_train * config.val_fraction)
        num_train -= num_val
    if config.max_samples is not None:
        num_train = min(num_train, config.max_samples)
    if image_shape is not None and image_shape[0] * image_shape[1] * image_shape[2] != num_features:
        raise UserError(
            f"data.image_shape {list(image_shape)} has {image_shape[0] * image_shape[1] * image_shape[2]} "
            f"values but each row of {train} has {num_features}: fix data.image_shape"
        )
    _check_enough_rows(num_train, train, config)
    info = DatasetInfo(num_features, num_classes, image_shape and tuple(image_shape), num_train, num_val)
    return DataSource(str(train), val and str(val), info, feature_column, label_column)


def sample_rows(source: DataSource, num_rows: int = 2):
    """The first ``num_rows`` training rows as the workers will see them: float32 features, int64 labels."""
    import numpy as np
    import torch

    table = pads.dataset(source.train_path, format="parquet").head(
        num_rows, columns=[source.feature_column, source.label_column])
    features = np.stack(table[source.feature_column].to_numpy(zero_copy_only=False)).astype(np.float32)
    labels = table[source.label_column].to_numpy().astype(np.int64)
    return torch.from_numpy(features), torch.from_numpy(labels)


def _open(path, key: str, feature_column: str, label_column: str) -> pads.Dataset:
    if not Path(path).exists():
        raise UserError(f"{key} {path} does not exist: give a Parquet file or a directory of them")
    try:
        dataset = pads.dataset(path, format="parquet")
        schema = dataset.schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{key} {path} is not readable Parquet ({str(exc).splitlines()[0]})") from None
    if not dataset.files:  # an empty directory has an empty schema: "no column" would point the wrong way
        raise UserError(f"{key} {path} is a directory that holds no Parquet files: write the data there, "
                        f"or set {key} to the directory or file that holds it")
    for column in (feature_column, label_column):
        if column not in schema.names:
            which = "feature_column" if column == feature_column else "label_column"
            raise UserError(
                f"{key} {path} has no column {column!r} (columns: {', '.join(schema.names)}): "
                f"set data.{which} to the right one"
            )
    if dataset.count_rows() == 0:
        raise UserError(f"{key} {path} has no rows")
    return dataset


def _feature_width(dataset: pads.Dataset, path, column: str) -> int:
    field_type = dataset.schema.field(column).type
    if pa.types.is_fixed_size_list(field_type) and _numeric(field_type.value_type):
        return field_type.list_size
    if pa.types.is_list(field_type) and _numeric(field_type.value_type):
        lengths = pc.list_value_length(dataset.to_table(columns=[column])[column])
        low, high = pc.min(lengths).as_py(), pc.max(lengths).as_py()
        if low != high:
            raise UserError(f"data {path}: rows of {column!r} have {low} to {high} values; every row needs the same")
        return low
    raise UserError(
        f"data {path}: column {column!r} is {field_type}; it must be a list of numbers per row "
        "(a pyarrow fixed_size_list<float32>)"
    )


def _check_finite(dataset: pads.Dataset, path, column: str) -> None:
    """Every row's features present and finite: one NaN row turns the loss NaN for good.

    Read batch by batch, so a large dataset is never held in memory at once.
    """
    missing = non_finite = 0
    for batch in dataset.to_batches(columns=[column]):
        lists = batch.column(0)
        missing += lists.null_count
        values = pc.list_flatten(lists)
        missing += values.null_count
        if pa.types.is_floating(values.type):
            non_finite += len(values) - values.null_count - pc.sum(pc.is_finite(values)).as_py() if len(values) else 0
    if missing or non_finite:
        raise UserError(
            f"data {path}: column {column!r} holds {missing} missing (null) and {non_finite} non-finite "
            "(NaN or inf) values; drop or fill those rows before training"
        )


def _check_enough_rows(num_train: int, path, config: DataConfig) -> None:
    """At least one global batch: fewer rows would leave workers with nothing to train on."""
    if num_train < config.batch_size:
        raise UserError(
            f"data {path}: {num_train} training rows (after val_fraction and max_samples) are fewer than "
            f"data.batch_size {config.batch_size}, the global batch; lower data.batch_size to at most "
            f"{num_train} or give more rows"
        )


def _check_labels(labels: pa.ChunkedArray, path, column: str, num_classes: int) -> None:
    if not pa.types.is_integer(labels.type):
        raise UserError(f"data {path}: label column {column!r} is {labels.type}; class labels must be integers")
    if labels.null_count:
        raise UserError(f"data {path}: label column {column!r} has {labels.null_count} missing values")
    low, high = pc.min(labels).as_py(), pc.max(labels).as_py()
    if low < 0 or high >= num_classes:
        raise UserError(
            f"data {path}: labels in {column!r} range {low}..{high}, outside [0, {num_classes}): "
            "fix data.num_classes or the labels"
        )


def _numeric(value_type: pa.DataType) -> bool:
    return pa.types.is_floating(value_type) or pa.types.is_integer(value_type)
