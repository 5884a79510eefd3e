"""Finding and checking the Parquet files behind a recipe's ``data`` section.

This runs on the driver with pyarrow alone, before Ray starts, so a missing file, a
missing column or a label out of range is a one-line error instead of a worker crash.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from rayeffi.data.columns import PATH, ColumnLayout, normalise
from rayeffi.data.info import DatasetInfo
from rayeffi.data.synthetic import write_synthetic
from rayeffi.errors import UserError
from rayeffi.recipe.sections import DataConfig, TaskConfig

DIGITS_IMAGE_SHAPE = (1, 8, 8)
MNIST_IMAGE_SHAPE = (1, 28, 28)


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
    layout: ColumnLayout | None = None
    """How a batch of these columns becomes ``features`` / ``label`` (``data/columns.py``)."""
    train_files: tuple[str, ...] = ()
    """An image folder's training files (read with Ray Data's binary reader, not Parquet)."""
    val_files: tuple[str, ...] = ()

    def columns(self, extra: bool = True) -> ColumnLayout:
        """The layout the workers read with (``extra``: with the extra columns)."""
        return dataclasses.replace(self.layout, extra_columns=self.extra_columns if extra else ())


def builtin_digits_paths() -> tuple[str, str]:
    """The shipped train/validation split of scikit-learn's 8x8 digits (1,437 / 360 rows)."""
    root = resources.files("rayeffi.data")
    return str(root / "digits_train.parquet"), str(root / "digits_val.parquet")


def builtin_mnist_paths() -> tuple[str, str]:
    """The shipped 5,000 MNIST digits (4,000 / 1,000 rows; ``data/SOURCES.md``)."""
    root = resources.files("rayeffi.data")
    return str(root / "mnist_train.parquet"), str(root / "mnist_val.parquet")


def resolve_source(config: DataConfig, seed: int, cache_dir: Path, task: TaskConfig | None = None) -> DataSource:
    """Turn a ``data`` section into checked Parquet paths (writing synthetic data if asked)."""
    task = task or TaskConfig()
    if config.dataset == "text":
        if task.name != "language_modeling":
            raise UserError(f"data.dataset 'text' is token sequences for a language model, not task {task.name!r}: "
                            "set task: language_modeling")
        from rayeffi.data.text import write_text_dataset

        train, val = write_text_dataset(config.seq_len or TEXT_SEQ_LEN, cache_dir)
        config = config.model_copy(update={"seq_len": config.seq_len or TEXT_SEQ_LEN, "vocab_size": 256})
        return _inspect_tokens(train, val, "tokens", None, task, config)
    if config.dataset == "image_folder":
        if task.name != "classification":
            raise UserError(f"data.dataset 'image_folder' is one class per image, not task {task.name!r}: "
                            "set task: classification")
        return _inspect_image_folder(config)
    if task.per_token:
        return _inspect_tokens(config.path, config.val_path, config.feature_column, config.label_column, task, config)
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
    return _inspect(
        config.path, config.val_path, config.feature_column, config.label_column,
        config.num_classes, config.image_shape, config, regression=task.name == "regression",
    )


TEXT_SEQ_LEN = 64


def _inspect(train, val, feature_column, label_column, num_classes, image_shape, config,
             regression: bool = False) -> DataSource:
    if regression:
        return _inspect_regression(train, val, feature_column, label_column, image_shape, config)
    train_table = _open(train, "data.path", feature_column, label_column)
    if _is_binary(train_table.schema.field(feature_column).type):
        return _inspect_encoded_images(train_table, train, val, feature_column, label_column, num_classes, config)
    _reject_sequences(train_table, train, feature_column, label_column)
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
        num_val = None
    if image_shape is not None and image_shape[0] * image_shape[1] * image_shape[2] != num_features:
        raise UserError(
            f"data.image_shape {list(image_shape)} has {image_shape[0] * image_shape[1] * image_shape[2]} "
            f"values but each row of {train} has {num_features}: fix data.image_shape"
        )
    num_train, num_val = _row_counts(num_train, num_val, train, config)
    info = DatasetInfo(num_features, num_classes, image_shape and tuple(image_shape), num_train, num_val)
    layout = ColumnLayout(feature_column, label_column, "rows", num_features)
    return DataSource(str(train), val and str(val), info, feature_column, label_column, layout=layout)


def _inspect_regression(train, val, feature_column, label_column, image_shape, config) -> DataSource:
    """A float target per row (or a fixed-size list of them)."""
    train_table = _open(train, "data.path", feature_column, label_column)
    num_features = _feature_width(train_table, train, feature_column)
    _check_finite(train_table, train, feature_column)
    num_targets = _target_width(train_table, train, label_column)
    num_train = train_table.count_rows()
    if val is not None:
        val_table = _open(val, "data.val_path", feature_column, label_column)
        if _feature_width(val_table, val, feature_column) != num_features:
            raise UserError(f"data.val_path {val}: '{feature_column}' width differs from data.path's {num_features}")
        if _target_width(val_table, val, label_column) != num_targets:
            raise UserError(f"data.val_path {val}: '{label_column}' holds a different number of targets than "
                            f"data.path's {num_targets}")
        _check_finite(val_table, val, feature_column)
        num_val = val_table.count_rows()
    else:
        num_val = None
    num_train, num_val = _row_counts(num_train, num_val, train, config)
    info = DatasetInfo(num_features, num_targets, image_shape and tuple(image_shape), num_train, num_val)
    layout = ColumnLayout(feature_column, label_column, "regression", num_features, num_targets)
    return DataSource(str(train), val and str(val), info, feature_column, label_column, layout=layout)


def _target_width(dataset: pads.Dataset, path, column: str) -> int:
    field_type = dataset.schema.field(column).type
    if _numeric(field_type):
        width = 1
    elif (pa.types.is_list(field_type) or pa.types.is_fixed_size_list(field_type)) and _numeric(field_type.value_type):
        width = _feature_width(dataset, path, column)
    else:
        raise UserError(f"data {path}: label column {column!r} is {field_type}; regression needs a number "
                        "(or a fixed-size list of numbers) per row")
    values = dataset.to_table(columns=[column])[column]
    flat = pc.list_flatten(values) if width > 1 or not _numeric(field_type) else values
    bad = flat.null_count + (len(flat) - flat.null_count - pc.sum(pc.is_finite(flat.cast(pa.float64()))).as_py())
    if values.null_count or bad:
        raise UserError(f"data {path}: label column {column!r} holds missing or non-finite targets; drop or fill "
                        "those rows before training")
    return width


def _inspect_tokens(train, val, token_column, label_column, task: TaskConfig, config: DataConfig) -> DataSource:
    """Token sequences (``list<int>``) for a per-token task; labels per token or shifted inputs."""
    train_table = _open(train, "data.path", token_column, None)
    explicit = label_column is not None and label_column in train_table.schema.names
    if task.name == "token_classification" and not explicit:
        raise UserError(f"data.path {train} has no column {label_column!r} of per-token labels (columns: "
                        f"{', '.join(train_table.schema.names)}): set data.label_column")
    longest = _check_tokens(train_table, train, token_column, config)
    seq_len = config.seq_len or longest
    if longest > seq_len and not config.truncate:
        raise UserError(f"data {train}: rows of {token_column!r} hold up to {longest} tokens, more than data.seq_len "
                        f"{seq_len}, and data.truncate is false: raise data.seq_len or set data.truncate: true")
    vocab_size = config.vocab_size or _max_value(train_table, token_column) + 1
    _check_token_range(train_table, train, token_column, vocab_size, config)
    num_classes = vocab_size
    if explicit:
        num_classes = _check_token_labels(train_table, train, token_column, label_column, task, config, vocab_size)
    num_train = train_table.count_rows()
    if val is not None:
        val_table = _open(val, "data.val_path", token_column, label_column if explicit else None)
        val_longest = _check_tokens(val_table, val, token_column, config)
        if val_longest > seq_len and not config.truncate:
            raise UserError(f"data {val}: rows of {token_column!r} hold up to {val_longest} tokens, more than "
                            f"data.seq_len {seq_len}, and data.truncate is false: raise data.seq_len")
        _check_token_range(val_table, val, token_column, vocab_size, config)
        if explicit:
            _check_token_labels(val_table, val, token_column, label_column, task, config, vocab_size, num_classes)
        num_val = val_table.count_rows()
    else:
        num_val = None
    num_train, num_val = _row_counts(num_train, num_val, train, config)
    info = DatasetInfo(seq_len, num_classes, None, num_train, num_val, vocab_size=vocab_size)
    layout = ColumnLayout(token_column, label_column if explicit else None, "tokens", seq_len,
                          pad_token_id=config.pad_token_id, ignore_index=task.ignore_index)
    return DataSource(str(train), val and str(val), info, token_column, label_column if explicit else "",
                      layout=layout)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _is_binary(field_type: pa.DataType) -> bool:
    return pa.types.is_binary(field_type) or pa.types.is_large_binary(field_type)


def _image_shape_of(data, where: str, config: DataConfig) -> tuple[int, int, int]:
    """``data.image_shape``, or the first image's (grayscale: 1 channel, anything else RGB)."""
    if config.image_shape is not None:
        return tuple(config.image_shape)
    with _open_image(data, where) as image:
        channels = 1 if image.mode in ("1", "L", "I", "I;16", "F") else 3
        return channels, image.size[1], image.size[0]


def _open_image(data, where: str):
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"data {where} does not decode as an image ({str(exc).splitlines()[0]}): remove or "
                        "replace it") from None


def _check_image(data, where: str, shape: tuple[int, int, int]) -> None:
    """Decodes, with the height and width of ``data.image_shape`` (the header is enough)."""
    with _open_image(data, where) as image:
        width, height = image.size
        try:
            image.verify()
        except Exception as exc:  # a truncated or corrupt file
            raise UserError(f"data {where} does not decode as an image ({exc}): remove or replace it") from None
    if (height, width) != tuple(shape[1:]):
        raise UserError(f"data {where} is {width}x{height} pixels but data.image_shape is {list(shape)} "
                        f"(height {shape[1]}, width {shape[2]}): resize the images or fix data.image_shape")


def _inspect_encoded_images(train_table, train, val, image_column, label_column, num_classes, config) -> DataSource:
    """A Parquet column of PNG/JPEG bytes plus integer labels; decoded on the workers."""
    first = train_table.head(1, columns=[image_column])[image_column][0].as_py()
    shape = _image_shape_of(first, f"{train}: the first row of {image_column!r}", config)
    counts = []
    for path, key in ((train, "data.path"), (val, "data.val_path")):
        if path is None:
            continue
        table = train_table if path == train else _open(path, key, image_column, label_column)
        if not _is_binary(table.schema.field(image_column).type):
            raise UserError(f"{key} {path}: column {image_column!r} is {table.schema.field(image_column).type}, "
                            "not encoded image bytes like data.path's")
        row = 0
        for batch in table.to_batches(columns=[image_column]):
            for data in batch.column(0).to_pylist():
                if data is None:
                    raise UserError(f"data {path}: row {row} of {image_column!r} is missing: drop it")
                _check_image(data, f"{path}: row {row} of {image_column!r}", shape)
                row += 1
        labels = table.to_table(columns=[label_column])[label_column]
        if num_classes is None:
            num_classes = max(int(pc.max(labels).as_py()) + 1, 2)
        _check_labels(labels, path, label_column, num_classes)
        counts.append(len(labels))
    num_train, num_val = _row_counts(counts[0], counts[1] if val is not None else None, train, config)
    num_features = shape[0] * shape[1] * shape[2]
    info = DatasetInfo(num_features, num_classes, shape, num_train, num_val)
    layout = ColumnLayout(image_column, label_column, "images", num_features, image_shape=shape)
    return DataSource(str(train), val and str(val), info, image_column, label_column, layout=layout)


def _image_files(root: Path, key: str, classes: tuple[str, ...] | None = None):
    """``(class names, files)`` of a folder laid out one subfolder per class."""
    if not root.is_dir():
        raise UserError(f"{key} {root} is not a directory: give a folder with one subfolder of images per class")
    found = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
    if classes is None:
        classes = found
        if not classes:
            raise UserError(f"{key} {root} has no class subfolders: lay the images out one folder per class "
                            "(ROOT/CLASS/IMAGE.png, as torchvision's ImageFolder)")
    elif found != classes:
        raise UserError(f"{key} {root} has class folders {list(found)}, not data.path's {list(classes)}: give the "
                        "validation images the same classes")
    files = []
    for name in classes:
        images = sorted(str(p) for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UserError(f"{key} {root / name} holds no image files ({', '.join(IMAGE_SUFFIXES)}): add images "
                            "or remove the folder")
        files += images
    return classes, files


def _inspect_image_folder(config: DataConfig) -> DataSource:
    """ROOT/CLASS/IMAGE files (torchvision's ImageFolder layout); every file checked by its header."""
    if config.path is None:
        raise UserError("data.dataset 'image_folder' needs data.path: a folder with one subfolder per class")
    classes, train_files = _image_files(Path(config.path), "data.path")
    if len(classes) < 2:
        raise UserError(f"data.path {config.path} has one class folder ({classes[0]}): a classifier needs two or more")
    shape = _image_shape_of(train_files[0], train_files[0], config)
    val_files: list[str] = []
    if config.val_path is not None:
        _, val_files = _image_files(Path(config.val_path), "data.val_path", classes)
    for file in (*train_files, *val_files):
        _check_image(file, file, shape)
    num_train, num_val = _row_counts(len(train_files), len(val_files) or None, config.path, config)
    num_features = shape[0] * shape[1] * shape[2]
    info = DatasetInfo(num_features, len(classes), shape, num_train, num_val)
    layout = ColumnLayout("bytes", None, "images", num_features, image_shape=shape, class_names=classes)
    return DataSource(str(config.path), config.val_path, info, "bytes", "", layout=layout,
                      train_files=tuple(train_files), val_files=tuple(val_files))


def _is_list(field_type: pa.DataType) -> bool:
    return pa.types.is_list(field_type) or pa.types.is_large_list(field_type) or pa.types.is_fixed_size_list(field_type)


def _check_tokens(dataset: pads.Dataset, path, column: str, config: DataConfig) -> int:
    """A ``list<int>`` column without missing values; returns the longest row."""
    field_type = dataset.schema.field(column).type
    if not (_is_list(field_type) and pa.types.is_integer(field_type.value_type)):
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
    if not (_is_list(field_type) and pa.types.is_integer(field_type.value_type)):
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


def _reject_sequences(dataset: pads.Dataset, path, feature_column: str, label_column: str) -> None:
    """Per-token data under a one-class-per-row task: name the task that reads it."""
    label_type = dataset.schema.field(label_column).type
    if _is_list(label_type):
        raise UserError(f"data {path}: label column {label_column!r} is {label_type}, a label per token; one class "
                        "per row is task classification: set task: token_classification (or language_modeling)")


def sample_rows(source: DataSource, num_rows: int = 2):
    """The first ``num_rows`` training rows exactly as the workers will see them (``data/columns.py``)."""
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
    return features, labels


def _matrix(column: pa.ChunkedArray):
    import numpy as np

    array = column.combine_chunks()
    if pa.types.is_fixed_size_list(array.type):
        values = pc.list_flatten(array).to_numpy(zero_copy_only=False)
        return np.array(values.reshape(len(array), array.type.list_size))  # a writable copy
    return np.array(array.to_numpy(zero_copy_only=False))


def _open(path, key: str, feature_column: str, label_column: str | None) -> pads.Dataset:
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


def _feature_width(dataset: pads.Dataset, path, column: str) -> int:
    field_type = dataset.schema.field(column).type
    if pa.types.is_fixed_size_list(field_type) and _numeric(field_type.value_type):
        return field_type.list_size
    if pa.types.is_list(field_type) and _numeric(field_type.value_type):
        lengths = pc.list_value_length(dataset.to_table(columns=[column])[column])
        low, high = pc.min(lengths).as_py(), pc.max(lengths).as_py()
        if low != high:
            hint = (" (token sequences of any length: set task: language_modeling or token_classification)"
                    if pa.types.is_integer(field_type.value_type) else "")
            raise UserError(f"data {path}: rows of {column!r} have {low} to {high} values; every row needs the "
                            f"same{hint}")
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


def _row_counts(num_rows: int, num_val: int | None, path, config: DataConfig) -> tuple[int, int]:
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
