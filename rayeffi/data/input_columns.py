"""The model's named inputs from the data (``data.inputs``), checked on the driver.

``data.inputs: {argument: column}`` carries any numeric column to the workers as the batch
column ``input.ARGUMENT``, which ``models/inputs.py: call_model`` passes to the model's
``forward`` by that keyword. Token data also carry ``attention_mask`` (built from each row's
length, ``data/columns.py``) and a ``token_type_ids`` column where the data have one. Whether
the forward takes each argument is checked once the model is built (``models/inputs.py:
check_named_inputs``).
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from rayeffi.data.checks import is_list, is_numeric
from rayeffi.data.info import DataSource
from rayeffi.errors import UserError
from rayeffi.recipe.sections import DataConfig

TOKEN_TYPE_IDS = "token_type_ids"
"""A column of this name in token data is passed to a forward that takes it, unasked."""


def with_named_inputs(source: DataSource, config: DataConfig) -> DataSource:
    """``source`` whose layout carries the named inputs: ``data.inputs`` (checked on every file),
    and ``token_type_ids`` in token data that hold such a column."""
    layout = source.layout
    inputs = dict(config.inputs)
    if not inputs and not layout.attention_mask:
        return source
    if inputs and source.train_files:
        raise UserError("data.inputs reads Parquet columns; an image folder has none: remove data.inputs")
    paths = [("data.path", source.train_path), *([("data.val_path", source.val_path)] if source.val_path else [])]
    datasets = [(key, path, pads.dataset(path, format="parquet")) for key, path in paths]
    for argument, column in inputs.items():
        for key, path, dataset in datasets:
            _check_input_column(dataset, key, path, argument, column, layout.attention_mask)
    if layout.attention_mask and TOKEN_TYPE_IDS not in inputs and all(
            TOKEN_TYPE_IDS in dataset.schema.names for _, _, dataset in datasets):
        for key, path, dataset in datasets:
            _check_input_column(dataset, key, path, TOKEN_TYPE_IDS, TOKEN_TYPE_IDS, True)
        inputs[TOKEN_TYPE_IDS] = TOKEN_TYPE_IDS
    # a mapped attention_mask replaces the one built from the rows' lengths
    layout = dataclasses.replace(layout, inputs=tuple(inputs.items()),
                                 attention_mask=layout.attention_mask and "attention_mask" not in inputs)
    return dataclasses.replace(source, layout=layout)


def _check_input_column(dataset: pads.Dataset, key: str, path, argument: str, column: str, tokens: bool) -> None:
    """A numeric column (a number or a list of numbers per row), nothing missing; lists of one
    width unless the data are token sequences (then padded to ``seq_len``)."""
    where = f"data.inputs.{argument}"
    if column not in dataset.schema.names:
        raise UserError(f"{where}: {key} {path} has no column {column!r} (columns: "
                        f"{', '.join(dataset.schema.names)}): name an existing column")
    field_type = dataset.schema.field(column).type
    listed = is_list(field_type)
    if not (is_numeric(field_type.value_type) if listed else is_numeric(field_type)):
        raise UserError(f"{where}: column {column!r} of {key} {path} is {field_type}; a named input must be numbers "
                        "(a number or a list of numbers per row): map a numeric column")
    values = dataset.to_table(columns=[column])[column]
    if values.null_count or (listed and pc.list_flatten(values).null_count):
        raise UserError(f"{where}: column {column!r} of {key} {path} has missing values; drop or fill them")
    if listed and not tokens and not pa.types.is_fixed_size_list(field_type):
        lengths = pc.list_value_length(values)
        if pc.min(lengths).as_py() != pc.max(lengths).as_py():
            raise UserError(f"{where}: rows of {column!r} in {key} {path} hold {pc.min(lengths).as_py()} to "
                            f"{pc.max(lengths).as_py()} values; outside token data every row needs the same")
