"""Encoded images (a Parquet column of PNG/JPEG bytes, or a folder per class): checked on the
driver by decoding every file's header; decoded for training on Ray Data's workers."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from rayeffi.data.checks import check_labels, open_parquet, row_counts
from rayeffi.data.columns import ColumnLayout
from rayeffi.data.info import DatasetInfo, DataSource
from rayeffi.errors import UserError
from rayeffi.recipe.sections import DataConfig


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")



def is_binary(field_type: pa.DataType) -> bool:
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



def inspect_encoded_images(train_table, train, val, image_column, label_column, num_classes, config) -> DataSource:
    """A Parquet column of PNG/JPEG bytes plus integer labels; decoded on the workers."""
    first = train_table.head(1, columns=[image_column])[image_column][0].as_py()
    shape = _image_shape_of(first, f"{train}: the first row of {image_column!r}", config)
    counts = []
    for path, key in ((train, "data.path"), (val, "data.val_path")):
        if path is None:
            continue
        table = train_table if path == train else open_parquet(path, key, image_column, label_column)
        if not is_binary(table.schema.field(image_column).type):
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
        check_labels(labels, path, label_column, num_classes)
        counts.append(len(labels))
    num_train, num_val = row_counts(counts[0], counts[1] if val is not None else None, train, config)
    num_features = shape[0] * shape[1] * shape[2]
    info = DatasetInfo(num_features, num_classes, shape, num_train, num_val)
    layout = ColumnLayout(image_column, label_column, "images", num_features, image_shape=shape)
    return DataSource(str(train), val and str(val), info, image_column, label_column, layout=layout)



def _image_files(root: Path, key: str, classes: tuple[str, ...] | None = None):
    """``(class names, files)`` of a folder laid out one subfolder per class."""
    if not root.is_dir():
        what = "is not a directory" if Path(root).exists() else f"does not exist ({Path(root).absolute()})"
        raise UserError(f"{key} {root} {what}: give a folder with one subfolder of images per class (the built-in "
                        "MNIST digits as such a folder: python -m rayeffi.data.image_folder DIR writes DIR/train "
                        "and DIR/val)")
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



def inspect_image_folder(config: DataConfig) -> DataSource:
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
    num_train, num_val = row_counts(len(train_files), len(val_files) or None, config.path, config)
    num_features = shape[0] * shape[1] * shape[2]
    info = DatasetInfo(num_features, len(classes), shape, num_train, num_val)
    layout = ColumnLayout("bytes", None, "images", num_features, image_shape=shape, class_names=classes)
    return DataSource(str(config.path), config.val_path, info, "bytes", "", layout=layout,
                      train_files=tuple(train_files), val_files=tuple(val_files))
