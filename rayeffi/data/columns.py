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
  attends across another row's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FEATURES, LABEL = "features", "label"
"""Column names every worker reads, whatever the user's Parquet calls them."""


@dataclass(frozen=True)
class ColumnLayout:
    """How one batch of the user's columns becomes ``features`` and ``label``."""

    feature_column: str
    """The list column of features (``FEATURES`` where ``feature_columns`` are stacked)."""
    label_column: str | None
    """None: a language model's labels are its inputs shifted by one."""
    kind: str = "rows"
    """``rows`` (numbers per row), ``tokens`` (token sequences) or ``regression``."""
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

    @property
    def columns(self) -> list[str]:
        features = list(self.feature_columns) or [self.feature_column]
        return [*features, *([self.label_column] if self.label_column else []), *self.extra_columns]


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
    """``features`` / ``label`` (and the extra columns) as the workers read them."""
    if layout.kind == "images":
        features = _fixed(decode_images(_column(batch, layout.feature_column).to_pylist(), layout.image_shape),
                          pa.float32())
        if layout.class_names:
            classes = {name: index for index, name in enumerate(layout.class_names)}
            labels = pa.array([classes[class_of(path)] for path in batch[PATH].to_pylist()], type=pa.int64())
        else:
            labels = _column(batch, layout.label_column).cast(pa.int64())
        columns = {FEATURES: features, LABEL: labels}
    elif layout.kind == "tokens":
        tokens = _column(batch, layout.feature_column)
        features = _padded(tokens, layout.width, 0, layout.pad_token_id)
        if layout.label_column is None:
            labels = _padded(tokens, layout.width, 1, layout.ignore_index)  # next token; the last scores nothing
        else:
            labels = _padded(_column(batch, layout.label_column), layout.width, 0, layout.ignore_index)
        columns = {FEATURES: _fixed(features, pa.int64()), LABEL: _fixed(labels, pa.int64())}
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
    return pa.table({**columns, **{name: batch[name] for name in layout.extra_columns}})


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


def normalised_layout(layout: ColumnLayout, width: int) -> ColumnLayout:
    """A layout that reads what :func:`normalise` wrote (e.g. a cache of its output) as it is."""
    return ColumnLayout(FEATURES, LABEL, "regression" if layout.kind == "regression" else "rows", width,
                        layout.label_width, extra_columns=layout.extra_columns)


def _padded(lists: pa.Array, width: int, offset: int, fill: int) -> np.ndarray:
    """``[rows, width]`` int64: each row's values from ``offset`` on, cut to ``width``, ``fill`` after."""
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    out = np.full((len(lengths), width), fill, dtype=np.int64)
    positions = np.arange(width)
    present = positions[None, :] < np.clip(lengths - offset, 0, width)[:, None]
    out[present] = flat[(starts[:, None] + offset + positions[None, :])[present]]
    return out


def _fixed(matrix: np.ndarray, value_type: pa.DataType) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), type=value_type), matrix.shape[1])
