"""Checks of Parquet columns that every kind of source shares (pyarrow only, on the driver).

Each failure is a one-line ``UserError`` naming the file, the column and the fix.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from rayeffi.errors import UserError
from rayeffi.recipe.sections import DataConfig


def open_parquet(path, key: str, feature_column: str, label_column: str | None) -> pads.Dataset:
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
        if column is not None and column not in schema.names:
            which = "feature_column" if column == feature_column else "label_column"
            raise UserError(
                f"{key} {path} has no column {column!r} (columns: {', '.join(schema.names)}): "
                f"set data.{which} to the right one"
            )
    if dataset.count_rows() == 0:
        raise UserError(f"{key} {path} has no rows")
    return dataset



def feature_width(dataset: pads.Dataset, path, column: str) -> int:
    field_type = dataset.schema.field(column).type
    if pa.types.is_fixed_size_list(field_type) and is_numeric(field_type.value_type):
        return field_type.list_size
    if pa.types.is_list(field_type) and is_numeric(field_type.value_type):
        lengths = pc.list_value_length(dataset.to_table(columns=[column])[column])
        low, high = pc.min(lengths).as_py(), pc.max(lengths).as_py()
        if low != high:
            hint = (" (token sequences of any length: set task: language_modeling or token_classification)"
                    if pa.types.is_integer(field_type.value_type) else "")
            raise UserError(f"data {path}: rows of {column!r} have {low} to {high} values; every row needs the "
                            f"same{hint}")
        return low
    hint = (": to train on scalar columns, leave data.feature_column out (every numeric column) or list them in "
            "data.feature_columns" if is_numeric(field_type) or pa.types.is_boolean(field_type) else "")
    raise UserError(
        f"data {path}: column {column!r} is {field_type}; it must be a list of numbers per row "
        f"(a pyarrow fixed_size_list<float32>){hint}"
    )



def check_finite(dataset: pads.Dataset, path, column: str) -> None:
    """Every row's features present and finite: one NaN row turns the loss NaN for good.

    Read batch by batch, so a large dataset is never held in memory at once.
    """
    missing = non_finite = 0
    try:
        for batch in dataset.to_batches(columns=[column]):
            lists = batch.column(0)
            missing += lists.null_count
            values = pc.list_flatten(lists)
            missing += values.null_count
            if pa.types.is_floating(values.type):
                finite = pc.sum(pc.is_finite(values)).as_py() if len(values) else 0
                non_finite += len(values) - values.null_count - finite
    except pa.ArrowInvalid as exc:
        # pyarrow cannot read back a fixed-size list column with a null row ("Expected all lists to be of size=N")
        raise UserError(f"data {path}: column {column!r} cannot be read ({str(exc).splitlines()[0]}): a row's list "
                        "is missing (null) where every row needs the same number of values; drop or fill those rows "
                        "before training") from None
    if missing or non_finite:
        raise UserError(
            f"data {path}: column {column!r} holds {missing} missing (null) and {non_finite} non-finite "
            "(NaN or inf) values; drop or fill those rows before training"
        )



def row_counts(num_rows: int, num_val: int | None, path, config: DataConfig) -> tuple[int, int]:
    """Training and validation rows: ``val_fraction`` of ``num_rows`` held out where there is no
    validation file (``num_val`` None), then ``max_samples`` and ``max_val_samples``; at least one
    global batch to train on."""
    if num_val is None:
        num_val = round(num_rows * config.val_fraction)
        num_rows -= num_val
    num_train = min(num_rows, config.max_samples or num_rows)
    _check_enough_rows(num_train, path, config)
    return num_train, min(num_val, config.max_val_samples or num_val)



def _check_enough_rows(num_train: int, path, config: DataConfig) -> None:
    """At least one global batch: fewer rows would leave workers with nothing to train on."""
    if num_train < config.batch_size:
        raise UserError(
            f"data {path}: {num_train} training rows (after val_fraction and max_samples) are fewer than "
            f"data.batch_size {config.batch_size}, the global batch; lower data.batch_size to at most "
            f"{num_train} or give more rows"
        )



def check_labels(labels: pa.ChunkedArray, path, column: str, num_classes: int) -> None:
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



def is_numeric(value_type: pa.DataType) -> bool:
    return pa.types.is_floating(value_type) or pa.types.is_integer(value_type)



def is_list(field_type: pa.DataType) -> bool:
    return pa.types.is_list(field_type) or pa.types.is_large_list(field_type) or pa.types.is_fixed_size_list(field_type)
