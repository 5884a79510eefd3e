"""The user's columns -> the two columns every worker reads, ``features`` and ``label``.

One function, :func:`normalise`, used by the Ray Data read (``ray_datasets.py``, on Ray's
workers, batch by batch) and by the driver's sample rows for the model check, so both
see exactly the same tensors:

- rows of numbers (``classification``, ``regression``): ``features`` a fixed-width
  float32 list, from one list column or stacked from numeric scalar columns (``f0 ...
  f11``, integers and booleans cast); ``label`` int64 classes, or a fixed-width float32
  list of targets;
- encoded images (a PNG/JPEG bytes column, or the files of an image folder): decoded
  here, on Ray Data's workers, to ``features`` float32 ``C*H*W`` in ``[0, 1]``; the label
  is the label column, or for an image folder the index of the file's class folder;
- token sequences (``language_modeling``, ``token_classification``): ``features`` a
  fixed-width int64 list of ``seq_len`` token ids, **padded at the end** with
  ``pad_token_id`` (or cut); ``label`` int64 of the same width: the per-token label
  column, or for a language model without one the inputs shifted by one (position ``t``
  predicts token ``t + 1``). Padding and the position after a row's last token hold
  ``ignore_index``, so they score nothing. Rows are padded, not packed: a row never
  attends across another row's tokens;
- token sequences with one class per row (``classification``, kind ``sequences``): the
  ids padded as above, ``label`` the row's int64 class.

Token sequences also carry ``input.attention_mask`` (int64, 1 on a row's real tokens, 0 on
its padding), and every kind carries the named inputs ``data.inputs`` maps (``input.ARG``,
``models/inputs.py``): numbers as they are (int64 or float32), lists of numbers fixed-width,
or in token data padded with 0 (or cut) to ``seq_len`` like the ids.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FEATURES, LABEL = "features", "label"
"""Column names every worker reads, whatever the user's Parquet calls them."""

INPUT_PREFIX = "input."
"""Batch columns named ``input.NAME`` are the model's named input ``NAME`` (``models/inputs.py``)."""


def input_column(name: str) -> str:
    """The batch column that carries the model's named input ``name``."""
    return INPUT_PREFIX + name


@dataclass(frozen=True)
class ColumnLayout:
    """How one batch of the user's columns becomes ``features`` and ``label``."""

    feature_column: str
    """The list column of features (``FEATURES`` where ``feature_columns`` are stacked)."""
    label_column: str | None
    """None: a language model's labels are its inputs shifted by one."""
    kind: str = "rows"
    """``rows`` (numbers per row), ``tokens`` (token sequences, a label per token), ``sequences``
    (token sequences, one class per row), ``regression``, ``images``, or ``ready`` (columns that
    are already ``features`` / ``label`` / ``input.NAME``: a soft-label cache)."""
    width: int = 1
    """Features per row, or ``seq_len`` tokens."""
    label_width: int = 1
    """Regression: targets per row."""
    pad_token_id: int = 0
    ignore_index: int = -100
    extra_columns: tuple[str, ...] = ()
    """Carried as they are (e.g. cached teacher logits)."""
    image_shape: tuple[int, int, int] | None = None
    """``images``: ``[C, H, W]`` every image decodes to (C 1: grayscale, 3: RGB)."""
    class_names: tuple[str, ...] = ()
    """An image folder's classes (sorted folder names): a file's label is its folder's index."""
    feature_columns: tuple[str, ...] = ()
    """``rows`` / ``regression``: numeric scalar columns stacked, in this order, into ``features``
    (empty: ``feature_column`` holds them as a list)."""
    attention_mask: bool = False
    """Token sequences: add ``input.attention_mask`` from each row's real length."""
    inputs: tuple[tuple[str, str], ...] = ()
    """``(argument, column)``: the model's named inputs (``data.inputs``, ``token_type_ids``)."""

    @property
    def input_columns(self) -> list[str]:
        """The ``input.NAME`` columns a batch carries (``models/inputs.py``)."""
        return [*([input_column("attention_mask")] if self.attention_mask else []),
                *(input_column(argument) for argument, _ in self.inputs)]

    @property
    def columns(self) -> list[str]:
        """The columns read from the data."""
        if self.kind == "ready":
            return [FEATURES, LABEL, *self.input_columns, *self.extra_columns]
        sources = [column for _, column in self.inputs if column not in (self.feature_column, self.label_column)]
        features = list(self.feature_columns) or [self.feature_column]
        return [*features, *([self.label_column] if self.label_column else []),
                *dict.fromkeys(source for source in sources if source not in features), *self.extra_columns]

    def ready(self) -> ColumnLayout:
        """This layout for data it has already normalised (a soft-label cache): read as it is."""
        return dataclasses.replace(self, kind="ready", feature_column=FEATURES, label_column=LABEL, feature_columns=())


PATH = "path"
"""The file path column of an image folder read (``ray.data.read_binary_files(include_paths=True)``)."""


def class_of(path: str) -> str:
    """An image folder file's class: the name of the folder it is in."""
    return path.replace("\\", "/").rsplit("/", 2)[-2]


def image_mode(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


def decode_images(encoded: list[bytes], image_shape: tuple[int, int, int]) -> np.ndarray:
    """PNG/JPEG/... bytes -> ``[N, C*H*W]`` float32 in ``[0, 1]`` (channels first)."""
    import io

    from PIL import Image

    channels, height, width = image_shape
    out = np.empty((len(encoded), channels * height * width), dtype=np.float32)
    for row, data in enumerate(encoded):
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert(image_mode(channels)), dtype=np.float32) / 255.0
        if pixels.shape[:2] != (height, width):
            raise ValueError(f"an image is {pixels.shape[1]}x{pixels.shape[0]}, not {width}x{height} (data.image_shape)")
        out[row] = (pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)).reshape(-1)
    return out


def normalise(batch: pa.Table, layout: ColumnLayout) -> pa.Table:
    """``features`` / ``label``, the named inputs ``input.NAME`` and the extra columns as the workers
    read them."""
    if layout.kind == "ready":
        return batch.select(layout.columns)
    if layout.kind == "images":
        features = _fixed(decode_images(_column(batch, layout.feature_column).to_pylist(), layout.image_shape),
                          pa.float32())
        if layout.class_names:
            classes = {name: index for index, name in enumerate(layout.class_names)}
            labels = pa.array([classes[class_of(path)] for path in batch[PATH].to_pylist()], type=pa.int64())
        else:
            labels = _column(batch, layout.label_column).cast(pa.int64())
        columns = {FEATURES: features, LABEL: labels}
    elif layout.kind in ("tokens", "sequences"):
        tokens = _column(batch, layout.feature_column)
        features = _padded(tokens, layout.width, 0, layout.pad_token_id)
        if layout.kind == "sequences":
            labels = _column(batch, layout.label_column).cast(pa.int64())  # one class per row
        elif layout.label_column is None:
            labels = _fixed(_padded(tokens, layout.width, 1, layout.ignore_index), pa.int64())  # next token
        else:
            labels = _fixed(_padded(_column(batch, layout.label_column), layout.width, 0, layout.ignore_index),
                            pa.int64())
        columns = {FEATURES: _fixed(features, pa.int64()), LABEL: labels}
    else:
        if layout.feature_columns:
            features = _fixed(_stacked(batch, layout.feature_columns), pa.float32())
        else:
            features = _fixed_floats(_column(batch, layout.feature_column), layout.width)
        label = _column(batch, layout.label_column)
        if layout.kind == "regression":
            columns = {FEATURES: features, LABEL: _fixed_floats(label, layout.label_width)}
        else:
            columns = {FEATURES: features, LABEL: label.cast(pa.int64())}
    if layout.attention_mask:
        tokens = _column(batch, layout.feature_column)
        columns[input_column("attention_mask")] = _fixed(attention_mask(tokens, layout.width), pa.int64())
    for argument, column in layout.inputs:
        columns[input_column(argument)] = _named_input(_column(batch, column), layout)
    return pa.table({**columns, **{name: batch[name] for name in layout.extra_columns}})


def attention_mask(lists: pa.Array, width: int) -> np.ndarray:
    """``[rows, width]`` int64: 1 on each row's real tokens (its first ``min(length, width)``), 0 after."""
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return (np.arange(width)[None, :] < np.minimum(lengths, width)[:, None]).astype(np.int64)


def _named_input(values: pa.Array, layout: ColumnLayout) -> pa.Array:
    """One ``data.inputs`` column: numbers as int64 / float32; lists fixed-width, or in token data
    padded with 0 (cut) to ``seq_len`` like the ids."""
    if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)
            or pa.types.is_fixed_size_list(values.type)):
        return values.cast(pa.int64() if pa.types.is_integer(values.type) else pa.float32())
    integers = pa.types.is_integer(values.type.value_type)
    if layout.attention_mask:  # token-shaped: as long as the ids
        if integers:
            return _fixed(_padded(values, layout.width, 0, 0), pa.int64())
        return _fixed(_padded(values, layout.width, 0, 0, np.float32), pa.float32())
    if integers:
        width = len(pc.list_flatten(values)) // max(len(values), 1)
        return pa.FixedSizeListArray.from_arrays(pc.list_flatten(values).cast(pa.int64()), width)
    return _fixed_floats(values, len(pc.list_flatten(values)) // max(len(values), 1))


def _column(batch: pa.Table, name: str) -> pa.Array:
    column = batch[name]
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _fixed_floats(values: pa.Array, width: int) -> pa.Array:
    target = pa.list_(pa.float32(), width)
    if values.type == target:
        return values
    if pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type) or pa.types.is_large_list(values.type):
        flat = pc.list_flatten(values)
    else:  # one number per row
        flat = values
    return pa.FixedSizeListArray.from_arrays(flat.cast(pa.float32()), width)


def _stacked(batch: pa.Table, names: tuple[str, ...]) -> np.ndarray:
    """``[rows, len(names)]`` float32: scalar columns side by side (one numpy copy per column)."""
    out = np.empty((batch.num_rows, len(names)), dtype=np.float32)
    for index, name in enumerate(names):
        out[:, index] = _column(batch, name).to_numpy(zero_copy_only=False)
    return out


def _padded(lists: pa.Array, width: int, offset: int, fill: int, dtype=np.int64) -> np.ndarray:
    """``[rows, width]``: each row's values from ``offset`` on, cut to ``width``, ``fill`` after."""
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(dtype)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    out = np.full((len(lengths), width), fill, dtype=dtype)
    positions = np.arange(width)
    present = positions[None, :] < np.clip(lengths - offset, 0, width)[:, None]
    out[present] = flat[(starts[:, None] + offset + positions[None, :])[present]]
    return out


def _fixed(matrix: np.ndarray, value_type: pa.DataType) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), type=value_type), matrix.shape[1])
