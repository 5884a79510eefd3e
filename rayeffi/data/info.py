"""What a model needs to know about its data, and where that data is: decided once on the driver."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rayeffi.data.columns import ColumnLayout


@dataclass(frozen=True)
class DatasetInfo:
    """Shape of one example and how many there are."""

    num_features: int
    num_classes: int
    image_shape: tuple[int, int, int] | None
    num_train: int
    num_val: int
    vocab_size: int | None = None
    """Token ids lie in ``[0, vocab_size)`` (per-token tasks; ``num_features`` is then ``seq_len``
    and ``num_classes`` the vocabulary, or the tags of token classification)."""


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
    skipped_columns: tuple[tuple[str, str], ...] = ()
    """``(name, type)`` of the columns the automatic choice of scalar feature columns left out
    (not numbers); ``layout.feature_columns`` holds the chosen ones."""

    def columns(self, extra: bool = True) -> ColumnLayout:
        """The layout the workers read with (``extra``: with the extra columns)."""
        return dataclasses.replace(self.layout, extra_columns=self.extra_columns if extra else ())
