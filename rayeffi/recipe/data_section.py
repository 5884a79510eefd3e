"""The recipe's ``data`` section: where the examples come from, which columns are read, how
they are batched (``DataConfig``), with its augmentation and synthetic-data blocks.

A frozen pydantic model that rejects unknown keys (``recipe/section.py``); the data layer
(``rayeffi/data/``) reads it. Re-exported by ``recipe/sections.py`` with the other sections.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from rayeffi.recipe.section import Section

_USER_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class SyntheticDataConfig(Section):
    """A Gaussian-blob classification set of any size, written to Parquet shards."""

    num_samples: PositiveInt = 4096
    """Training rows; the validation split adds a fifth of that."""
    num_features: PositiveInt = 64
    num_classes: int = Field(10, ge=2)
    num_shards: PositiveInt = 4
    """Parquet files the training rows are spread over (Ray Data reads them in parallel)."""


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
