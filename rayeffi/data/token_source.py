"""Token sequences (``list<int>`` columns) checked on the driver: for the per-token tasks, and for
``classification`` with one class per row (rows of different lengths, or ``data.seq_len`` set)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from rayeffi.data.checks import check_labels, is_list, open_parquet, row_counts
from rayeffi.data.columns import FEATURES, ColumnLayout
from rayeffi.data.info import DatasetInfo, DataSource
from rayeffi.errors import UserError
from rayeffi.recipe.sections import DataConfig, TaskConfig


def inspect_tokens(train, val, token_column, label_column, task: TaskConfig, config: DataConfig) -> DataSource:
    """Token sequences (``list<int>``) for a per-token task; labels per token or shifted inputs."""
    train_table = open_parquet(train, "data.path", token_column, None)
    explicit = label_column is not None and label_column in train_table.schema.names
    if task.name == "token_classification" and not explicit:
        raise UserError(f"data.path {train} has no column {label_column!r} of per-token labels (columns: "
                        f"{', '.join(train_table.schema.names)}): set data.label_column")
    seq_len, vocab_size = _token_shape(train_table, train, token_column, config)
    num_classes = vocab_size
    if explicit:
        num_classes = _check_token_labels(train_table, train, token_column, label_column, task, config, vocab_size)
    num_train = train_table.count_rows()
    if val is not None:
        val_table = open_parquet(val, "data.val_path", token_column, label_column if explicit else None)
        _check_val_tokens(val_table, val, token_column, config, seq_len, vocab_size)
        if explicit:
            _check_token_labels(val_table, val, token_column, label_column, task, config, vocab_size, num_classes)
        num_val = val_table.count_rows()
    else:
        num_val = None
    num_train, num_val = row_counts(num_train, num_val, train, config)
    info = DatasetInfo(seq_len, num_classes, None, num_train, num_val, vocab_size=vocab_size)
    layout = ColumnLayout(token_column, label_column if explicit else None, "tokens", seq_len,
                          pad_token_id=config.pad_token_id, ignore_index=task.ignore_index, attention_mask=True)
    return DataSource(str(train), val and str(val), info, token_column, label_column if explicit else "",
                      layout=layout)



def holds_sequences(config: DataConfig) -> bool:
    """Whether ``classification`` reads ``data.path``'s feature column as token sequences: a
    ``list<int>`` column whose rows differ in length, or any ``list<int>`` column with ``data.seq_len``
    set (a fixed-length column without it stays rows of features)."""
    if config.feature_columns:  # scalar columns chosen by name: a table, not sequences
        return False
    column = config.feature_column or FEATURES
    dataset = open_parquet(config.path, "data.path", config.feature_column, config.label_column)
    if column not in dataset.schema.names:  # a table of scalar columns (data/tables.py)
        return False
    field_type = dataset.schema.field(column).type
    if not (is_list(field_type) and pa.types.is_integer(field_type.value_type)):
        return False
    if config.seq_len is not None:
        return True
    if pa.types.is_fixed_size_list(field_type):
        return False
    lengths = pc.list_value_length(dataset.to_table(columns=[column])[column])
    return pc.min(lengths).as_py() != pc.max(lengths).as_py()


def inspect_sequences(train, val, token_column, label_column, config: DataConfig) -> DataSource:
    """Token sequences with one class per row (``classification``): ids padded (or cut) to
    ``seq_len``, an attention mask, an int64 class label; no row may be empty."""
    train_table = open_parquet(train, "data.path", token_column, label_column)
    _check_no_empty_row(train_table, train, token_column)
    seq_len, vocab_size = _token_shape(train_table, train, token_column, config)
    labels = train_table.to_table(columns=[label_column])[label_column]
    if not pa.types.is_integer(labels.type):
        raise UserError(f"data {train}: label column {label_column!r} is {labels.type}; classification needs one "
                        "integer class per row (a label per token is task: token_classification)")
    num_classes = config.num_classes or max(int(pc.max(labels).as_py()) + 1, 2)
    check_labels(labels, train, label_column, num_classes)
    num_val = None
    if val is not None:
        val_table = open_parquet(val, "data.val_path", token_column, label_column)
        _check_no_empty_row(val_table, val, token_column)
        _check_val_tokens(val_table, val, token_column, config, seq_len, vocab_size)
        val_labels = val_table.to_table(columns=[label_column])[label_column]
        check_labels(val_labels, val, label_column, num_classes)
        num_val = len(val_labels)
    num_train, num_val = row_counts(len(labels), num_val, train, config)
    info = DatasetInfo(seq_len, num_classes, None, num_train, num_val, vocab_size=vocab_size)
    layout = ColumnLayout(token_column, label_column, "sequences", seq_len, pad_token_id=config.pad_token_id,
                          attention_mask=True)
    return DataSource(str(train), val and str(val), info, token_column, label_column, layout=layout)


def _token_shape(dataset: pads.Dataset, path, column: str, config: DataConfig) -> tuple[int, int]:
    """``(seq_len, vocab_size)`` of a training token column, checked: ids in the vocabulary, rows
    within ``seq_len`` unless they may be cut."""
    longest = _check_tokens(dataset, path, column, config)
    seq_len = config.seq_len or longest
    if longest > seq_len and not config.truncate:
        raise UserError(f"data {path}: rows of {column!r} hold up to {longest} tokens, more than data.seq_len "
                        f"{seq_len}, and data.truncate is false: raise data.seq_len or set data.truncate: true")
    vocab_size = config.vocab_size or _max_value(dataset, column) + 1
    _check_token_range(dataset, path, column, vocab_size, config)
    return seq_len, vocab_size


def _check_val_tokens(dataset: pads.Dataset, path, column: str, config: DataConfig, seq_len: int,
                      vocab_size: int) -> None:
    longest = _check_tokens(dataset, path, column, config)
    if longest > seq_len and not config.truncate:
        raise UserError(f"data {path}: rows of {column!r} hold up to {longest} tokens, more than "
                        f"data.seq_len {seq_len}, and data.truncate is false: raise data.seq_len")
    _check_token_range(dataset, path, column, vocab_size, config)


def _check_no_empty_row(dataset: pads.Dataset, path, column: str) -> None:
    """One class per row needs a token in every row: an empty row has nothing to attend to."""
    values = dataset.to_table(columns=[column])[column]
    empty = pc.sum(pc.equal(pc.fill_null(pc.list_value_length(values), 0), 0)).as_py()
    if empty:
        raise UserError(f"data {path}: {empty} rows of {column!r} hold no tokens; every row needs at least one: "
                        "drop the empty rows")


def _check_tokens(dataset: pads.Dataset, path, column: str, config: DataConfig) -> int:
    """A ``list<int>`` column without missing values; returns the longest row."""
    field_type = dataset.schema.field(column).type
    if not (is_list(field_type) and pa.types.is_integer(field_type.value_type)):
        raise UserError(f"data {path}: column {column!r} is {field_type}; a per-token task needs token ids, a "
                        "list<int> per row: set data.feature_column to the token column, or task: classification")
    values = dataset.to_table(columns=[column])[column]
    if values.null_count or pc.list_flatten(values).null_count:
        raise UserError(f"data {path}: column {column!r} has missing rows or token ids; drop or fill them")
    longest = pc.max(pc.list_value_length(values)).as_py() or 0
    if longest == 0:
        raise UserError(f"data {path}: every row of {column!r} is empty: there are no tokens to train on")
    return longest



def _max_value(dataset: pads.Dataset, column: str) -> int:
    return int(pc.max(pc.list_flatten(dataset.to_table(columns=[column])[column])).as_py())



def _check_token_range(dataset: pads.Dataset, path, column: str, vocab_size: int, config: DataConfig) -> None:
    flat = pc.list_flatten(dataset.to_table(columns=[column])[column])
    low, high = pc.min(flat).as_py(), pc.max(flat).as_py()
    if low < 0 or high >= vocab_size:
        raise UserError(f"data {path}: token ids in {column!r} range {low}..{high}, outside [0, {vocab_size}) "
                        "(data.vocab_size): raise data.vocab_size or fix the ids")
    if config.pad_token_id >= vocab_size:
        raise UserError(f"data.pad_token_id {config.pad_token_id} is outside the vocabulary [0, {vocab_size}): "
                        "use an id below data.vocab_size")



def _check_token_labels(dataset, path, token_column, label_column, task, config, vocab_size,
                        num_classes: int | None = None) -> int:
    """Per-token labels: ``list<int>``, one per token, in range (or ``ignore_index``); returns the classes."""
    field_type = dataset.schema.field(label_column).type
    if not (is_list(field_type) and pa.types.is_integer(field_type.value_type)):
        raise UserError(f"data {path}: label column {label_column!r} is {field_type}; task {task.name} needs a "
                        "list<int> of labels per row, one per token")
    table = dataset.to_table(columns=[token_column, label_column])
    labels = table[label_column]
    if labels.null_count or pc.list_flatten(labels).null_count:
        raise UserError(f"data {path}: label column {label_column!r} has missing rows or labels")
    token_lengths = pc.list_value_length(table[token_column])
    label_lengths = pc.list_value_length(labels)
    mismatched = pc.sum(pc.not_equal(token_lengths, label_lengths)).as_py()
    if mismatched:
        raise UserError(f"data {path}: {mismatched} rows have a different number of labels in {label_column!r} "
                        f"than tokens in {token_column!r}: give one label per token")
    flat = pc.list_flatten(labels)
    scored = pc.filter(flat, pc.not_equal(flat, task.ignore_index))
    if len(scored) == 0:
        raise UserError(f"data {path}: every label in {label_column!r} is task.ignore_index {task.ignore_index}: "
                        "nothing would be scored")
    low, high = pc.min(scored).as_py(), pc.max(scored).as_py()
    if task.name == "language_modeling":
        num_classes = vocab_size
    elif num_classes is None:
        num_classes = config.num_classes or max(high + 1, 2)
    if low < 0 or high >= num_classes:
        raise UserError(f"data {path}: labels in {label_column!r} range {low}..{high}, outside [0, {num_classes}) "
                        f"(or task.ignore_index {task.ignore_index}): fix data.num_classes or the labels")
    return num_classes
