"""Finding and checking the data behind a recipe's ``data`` section.

This runs on the driver with pyarrow alone, before Ray starts, so a missing file, a
missing column or a label out of range is a one-line error instead of a worker crash.
Rows of features (and regression targets) are checked here, the features of a table of
numeric scalar columns in ``tables.py``; token sequences in ``token_source.py``, encoded
images and image folders in ``image_source.py``, the checks they share in ``checks.py``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from rayeffi.data.checks import (check_finite, check_labels, feature_width, is_list, is_numeric, open_parquet,
                                 row_counts)
from rayeffi.data.columns import FEATURES, PATH, ColumnLayout, normalise
from rayeffi.data.image_source import inspect_encoded_images, inspect_image_folder, is_binary
from rayeffi.data.info import DatasetInfo, DataSource
from rayeffi.data.synthetic import write_synthetic
from rayeffi.data.tables import check_columns_present, check_finite_columns, select_feature_columns
from rayeffi.errors import UserError
from rayeffi.data.input_columns import with_named_inputs
from rayeffi.data.token_source import holds_sequences, inspect_sequences, inspect_tokens
from rayeffi.data.transform import transformed_config
from rayeffi.recipe.sections import DataConfig, TaskConfig

DIGITS_IMAGE_SHAPE = (1, 8, 8)
MNIST_IMAGE_SHAPE = (1, 28, 28)


def builtin_digits_paths() -> tuple[str, str]:
    """The shipped train/validation split of scikit-learn's 8x8 digits (1,437 / 360 rows)."""
    root = resources.files("rayeffi.data")
    return str(root / "digits_train.parquet"), str(root / "digits_val.parquet")


def builtin_mnist_paths() -> tuple[str, str]:
    """The shipped 5,000 MNIST digits (4,000 / 1,000 rows; ``data/SOURCES.md``)."""
    root = resources.files("rayeffi.data")
    return str(root / "mnist_train.parquet"), str(root / "mnist_val.parquet")


def resolve_source(config: DataConfig, seed: int, cache_dir: Path, task: TaskConfig | None = None) -> DataSource:
    """Turn a ``data`` section into checked Parquet paths (writing synthetic data if asked), with
    the model's named inputs (``data/input_columns.py``)."""
    task = task or TaskConfig()
    if config.transform is not None:  # every check below, and every read, sees the transformed rows
        config = transformed_config(config, cache_dir, task)
    return with_named_inputs(_resolve_source(config, seed, cache_dir, task), config)


def _resolve_source(config: DataConfig, seed: int, cache_dir: Path, task: TaskConfig) -> DataSource:
    if config.dataset == "text":
        if task.name != "language_modeling":
            raise UserError(f"data.dataset 'text' is token sequences for a language model, not task {task.name!r}: "
                            "set task: language_modeling")
        from rayeffi.data.text import write_text_dataset

        train, val = write_text_dataset(config.seq_len or TEXT_SEQ_LEN, cache_dir)
        config = config.model_copy(update={"seq_len": config.seq_len or TEXT_SEQ_LEN, "vocab_size": 256})
        return inspect_tokens(train, val, "tokens", None, task, config)
    if config.dataset == "image_folder":
        if task.name != "classification":
            raise UserError(f"data.dataset 'image_folder' is one class per image, not task {task.name!r}: "
                            "set task: classification")
        return inspect_image_folder(config)
    if task.per_token:
        if config.feature_columns is not None or config.exclude_columns:
            raise UserError(f"data.feature_columns and data.exclude_columns stack numeric columns into rows of "
                            f"numbers; task {task.name} reads one token column: set data.feature_column instead")
        return inspect_tokens(config.path, config.val_path, config.feature_column or FEATURES, config.label_column,
                              task, config)
    if config.dataset in ("digits", "mnist"):
        if task.name != "classification":
            raise UserError(f"data.dataset {config.dataset!r} is images of digits (classification), not task "
                            f"{task.name!r}: set task: classification or give dataset: parquet")
        train, val = builtin_digits_paths() if config.dataset == "digits" else builtin_mnist_paths()
        shape = DIGITS_IMAGE_SHAPE if config.dataset == "digits" else MNIST_IMAGE_SHAPE
        return _inspect(train, val, "features", "label", None, shape, config)
    if config.dataset == "synthetic":
        if task.name != "classification":
            raise UserError(f"data.dataset 'synthetic' is a classification set, not task {task.name!r}: "
                            "set task: classification or give dataset: parquet")
        train, val = write_synthetic(config.synthetic, seed, cache_dir)
        return _inspect(train, val, "features", "label", config.synthetic.num_classes, None, config)
    if task.name == "classification" and config.dataset == "parquet" and holds_sequences(config):
        return inspect_sequences(config.path, config.val_path, config.feature_column or FEATURES, config.label_column,
                                 config)
    return _inspect(
        config.path, config.val_path, config.feature_column, config.label_column,
        config.num_classes, config.image_shape, config, regression=task.name == "regression",
    )


TEXT_SEQ_LEN = 64


def _inspect(train, val, feature_column, label_column, num_classes, image_shape, config,
             regression: bool = False) -> DataSource:
    if regression:
        return _inspect_regression(train, val, feature_column, label_column, image_shape, config)
    train_table = open_parquet(train, "data.path", feature_column, label_column)
    feature_column, scalar_columns, skipped = _choose_features(train_table, train, feature_column, label_column, config)
    if feature_column and is_binary(train_table.schema.field(feature_column).type):
        return inspect_encoded_images(train_table, train, val, feature_column, label_column, num_classes, config)
    _reject_sequences(train_table, train, feature_column, label_column)
    num_features = _check_features(train_table, train, "data.path", feature_column, scalar_columns)
    labels = train_table.to_table(columns=[label_column])[label_column]
    if num_classes is None:
        num_classes = max(int(pc.max(labels).as_py()) + 1, 2)
    check_labels(labels, train, label_column, num_classes)
    num_train = len(labels)
    if val is not None:
        val_table = open_parquet(val, "data.val_path", feature_column, label_column)
        _check_features(val_table, val, "data.val_path", feature_column, scalar_columns, num_features)
        val_labels = val_table.to_table(columns=[label_column])[label_column]
        check_labels(val_labels, val, label_column, num_classes)
        num_val = len(val_labels)
    else:
        num_val = None
    _check_image_shape(image_shape, num_features, train)
    num_train, num_val = row_counts(num_train, num_val, train, config)
    info = DatasetInfo(num_features, num_classes, image_shape and tuple(image_shape), num_train, num_val)
    layout = ColumnLayout(feature_column or FEATURES, label_column, "rows", num_features,
                          feature_columns=scalar_columns)
    return DataSource(str(train), val and str(val), info, feature_column or FEATURES, label_column, layout=layout,
                      skipped_columns=skipped)


def _inspect_regression(train, val, feature_column, label_column, image_shape, config) -> DataSource:
    """A float target per row (or a fixed-size list of them)."""
    train_table = open_parquet(train, "data.path", feature_column, label_column)
    feature_column, scalar_columns, skipped = _choose_features(train_table, train, feature_column, label_column, config)
    num_features = _check_features(train_table, train, "data.path", feature_column, scalar_columns)
    num_targets = _target_width(train_table, train, label_column)
    num_train = train_table.count_rows()
    if val is not None:
        val_table = open_parquet(val, "data.val_path", feature_column, label_column)
        _check_features(val_table, val, "data.val_path", feature_column, scalar_columns, num_features)
        if _target_width(val_table, val, label_column) != num_targets:
            raise UserError(f"data.val_path {val}: '{label_column}' holds a different number of targets than "
                            f"data.path's {num_targets}")
        num_val = val_table.count_rows()
    else:
        num_val = None
    _check_image_shape(image_shape, num_features, train)
    num_train, num_val = row_counts(num_train, num_val, train, config)
    info = DatasetInfo(num_features, num_targets, image_shape and tuple(image_shape), num_train, num_val)
    layout = ColumnLayout(feature_column or FEATURES, label_column, "regression", num_features, num_targets,
                          feature_columns=scalar_columns)
    return DataSource(str(train), val and str(val), info, feature_column or FEATURES, label_column, layout=layout,
                      skipped_columns=skipped)


def _check_image_shape(image_shape, num_features: int, path) -> None:
    if image_shape is not None and image_shape[0] * image_shape[1] * image_shape[2] != num_features:
        raise UserError(
            f"data.image_shape {list(image_shape)} has {image_shape[0] * image_shape[1] * image_shape[2]} "
            f"values but each row of {path} has {num_features}: fix data.image_shape"
        )


def _choose_features(table: pads.Dataset, path, feature_column: str | None, label_column: str,
                     config: DataConfig) -> tuple[str | None, tuple[str, ...], tuple[tuple[str, str], ...]]:
    """``(list column, scalar columns, skipped columns)``: one list column (``data.feature_column``, or a
    ``features`` column when no scalar columns are asked for), else the numeric scalar columns (``tables.py``)."""
    if feature_column is not None:
        return feature_column, (), ()
    if config.feature_columns is None and not config.exclude_columns and FEATURES in table.schema.names:
        return FEATURES, (), ()
    chosen, skipped = select_feature_columns(table.schema, label_column, config, path)
    return None, chosen, skipped


def _check_features(table: pads.Dataset, path, key: str, feature_column: str | None, scalar_columns: tuple[str, ...],
                    num_features: int | None = None) -> int:
    """Features per row, all present and finite; ``num_features``: they must be as many (a validation file)."""
    if feature_column is None:
        if num_features is not None:
            check_columns_present(table, path, key, scalar_columns)
        check_finite_columns(table, path, scalar_columns)
        return len(scalar_columns)
    width = feature_width(table, path, feature_column)
    if num_features is not None and width != num_features:
        raise UserError(f"{key} {path}: '{feature_column}' width differs from data.path's {num_features}")
    check_finite(table, path, feature_column)
    return width


def _target_width(dataset: pads.Dataset, path, column: str) -> int:
    field_type = dataset.schema.field(column).type
    if is_numeric(field_type):
        width = 1
    elif (pa.types.is_list(field_type) or pa.types.is_fixed_size_list(field_type)) and is_numeric(field_type.value_type):
        width = feature_width(dataset, path, column)
    else:
        raise UserError(f"data {path}: label column {column!r} is {field_type}; regression needs a number "
                        "(or a fixed-size list of numbers) per row")
    values = dataset.to_table(columns=[column])[column]
    flat = pc.list_flatten(values) if width > 1 or not is_numeric(field_type) else values
    bad = flat.null_count + (len(flat) - flat.null_count - pc.sum(pc.is_finite(flat.cast(pa.float64()))).as_py())
    if values.null_count or bad:
        raise UserError(f"data {path}: label column {column!r} holds missing or non-finite targets; drop or fill "
                        "those rows before training")
    return width


def _reject_sequences(dataset: pads.Dataset, path, feature_column: str, label_column: str) -> None:
    """Per-token data under a one-class-per-row task: name the task that reads it."""
    label_type = dataset.schema.field(label_column).type
    if is_list(label_type):
        raise UserError(f"data {path}: label column {label_column!r} is {label_type}, a label per token; one class "
                        "per row is task classification: set task: token_classification (or language_modeling)")


def sample_rows(source: DataSource, num_rows: int = 2):
    """The first ``num_rows`` training rows exactly as the workers will see them (``data/columns.py``):
    ``(features, labels, named inputs)``, the last ``{input.NAME: tensor}``."""
    import torch

    layout = source.columns(extra=False)
    if source.train_files:  # an image folder
        files = source.train_files[:num_rows]
        table = pa.table({"bytes": [Path(f).read_bytes() for f in files], PATH: list(files)})
    else:
        table = pads.dataset(source.train_path, format="parquet").head(num_rows, columns=layout.columns)
    batch = normalise(table, layout)
    features = torch.from_numpy(_matrix(batch["features"]))
    labels = torch.from_numpy(_matrix(batch["label"]))
    named = {name: torch.from_numpy(_matrix(batch[name])) for name in layout.input_columns}
    return features, labels, named


def _matrix(column: pa.ChunkedArray):
    import numpy as np

    array = column.combine_chunks()
    if pa.types.is_fixed_size_list(array.type):
        values = pc.list_flatten(array).to_numpy(zero_copy_only=False)
        return np.array(values.reshape(len(array), array.type.list_size))  # a writable copy
    return np.array(array.to_numpy(zero_copy_only=False))


