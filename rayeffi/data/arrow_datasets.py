"""Checked Parquet sources -> in-memory datasets read with pyarrow alone (no Ray).

The in-process run (``stages/local_run.py``: every stage of ``scaling.num_workers: 0``
that needs no actor) reads its data here instead of through Ray Data
(``ray_datasets.py``): the same files, the same columns, the same :func:`normalise`, the
same ``max_samples`` cut, and an :class:`ArrowDataset` answers ``iter_batches`` as a
Ray Dataset does, so the worker's ``ShardBatches`` (``worker/batches.py``) builds the same
in-memory shard from it, batch for batch, and shuffles it with the same seeds.

Where the data has no validation file, ``val_fraction`` of the training rows is held out by
a permutation seeded by the stage's seed (Ray Data's seeded shuffle is its own): the same
sizes as under Ray, not the same rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from rayeffi.data.columns import PATH, ColumnLayout, normalise
from rayeffi.data.info import DataSource
from rayeffi.recipe.sections import DataConfig


class ArrowDataset:
    """Normalised rows (``features``, ``label``, extras) in memory, read as Ray Data's are."""

    def __init__(self, table: pa.Table):
        self.table = table
        self._tensors: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.table.num_rows

    def count(self) -> int:
        return self.table.num_rows

    def limit(self, num_rows: int) -> ArrowDataset:
        return ArrowDataset(self.table.slice(0, num_rows))

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every column as one tensor (a fixed-width list column: ``[rows, width]``), built once."""
        if self._tensors is None:
            self._tensors = {name: column_tensor(self.table[name]) for name in self.table.column_names}
        return self._tensors

    def iter_batches(self, *, batch_size: int, batch_format: str = "pyarrow", prefetch_batches: int = 1
                     ) -> Iterator[pa.Table]:
        """Slices of ``batch_size`` rows in the table's order, as ``ray.data.Dataset.iter_batches`` with
        ``batch_format="pyarrow"`` gives them (the streamed read of ``worker/batches.py``)."""
        if batch_format != "pyarrow":
            raise ValueError(f"an in-memory Arrow dataset gives batch_format='pyarrow' only, not {batch_format!r}")
        for first in range(0, self.table.num_rows, batch_size):
            yield self.table.slice(first, batch_size)


def column_tensor(column: pa.ChunkedArray | pa.Array) -> torch.Tensor:
    """One column as a tensor, as Ray Data's ``iter_torch_batches`` would make it: a list column of
    equal widths becomes ``[rows, width]`` of its value type, a scalar column ``[rows]``."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(array.type):
        return _tensor(array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), array.type.list_size))
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        widths = set(array.value_lengths().to_numpy(zero_copy_only=False).tolist())
        if len(widths) > 1:
            raise ValueError(f"a list column of rows of different lengths {sorted(widths)[:5]} cannot become a tensor")
        width = widths.pop() if widths else 0
        return _tensor(array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), width))
    return _tensor(array.to_numpy(zero_copy_only=False))


def _tensor(values: np.ndarray) -> torch.Tensor:
    """A tensor owning a copy: Arrow's buffers are read-only."""
    return torch.from_numpy(np.array(values, copy=True, order="C"))


def build_arrow_datasets(source: DataSource, config: DataConfig, seed: int) -> dict[str, ArrowDataset]:
    """``{"train": ..., "val": ...}``: ``build_ray_datasets``'s rows, read with pyarrow on this process."""
    if source.train_files:
        train = read_files(source.train_files, source.columns(extra=True))
    else:
        train = read_parquet(source.train_path, source.columns(extra=True))
    if source.val_files:
        val = read_files(source.val_files, source.columns(extra=False))
    elif source.val_path is not None:
        val = read_parquet(source.val_path, source.columns(extra=False))
    else:
        train, val = held_out_split(train, config.val_fraction, seed)
    if config.max_samples is not None:
        train = train.slice(0, config.max_samples)
    if config.max_val_samples is not None:
        val = val.slice(0, config.max_val_samples)
    return {"train": ArrowDataset(train), "val": ArrowDataset(val)}


def read_parquet(path: str, layout: ColumnLayout) -> pa.Table:
    """A Parquet file or folder of files (in file-name order, as Ray Data lists them), normalised."""
    table = pads.dataset(path, format="parquet").to_table(columns=layout.columns)
    return normalise(table, layout)


def read_files(files: tuple[str, ...], layout: ColumnLayout) -> pa.Table:
    """An image folder's files as ``bytes`` and ``path`` columns (Ray Data's binary read), normalised."""
    table = pa.table({"bytes": pa.array([Path(file).read_bytes() for file in files], pa.binary()),
                      PATH: pa.array([str(file) for file in files], pa.string())})
    return normalise(table, layout)


def held_out_split(table: pa.Table, val_fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """``(train, val)``: ``round(rows * val_fraction)`` rows held out after a permutation seeded by ``seed``."""
    num_val = round(table.num_rows * val_fraction)
    order = np.random.default_rng(seed).permutation(table.num_rows)
    shuffled = table.take(pa.array(order))
    return shuffled.slice(0, table.num_rows - num_val), shuffled.slice(table.num_rows - num_val)


def write_parquet(table: pa.Table, directory: Path) -> str:
    """``table`` as one Parquet file in ``directory`` (replacing what was there); returns the folder."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.parquet"):
        old.unlink()
    pq.write_table(table, directory / "part-0.parquet")
    return str(directory)
