"""Checked Parquet sources -> the Ray Data datasets a Train run shards over its workers."""

from __future__ import annotations

import ray.data

from rayeffi.data.columns import FEATURES, LABEL, ColumnLayout, normalise  # noqa: F401  (FEATURES, LABEL re-exported)
from rayeffi.data.sources import DataSource
from rayeffi.recipe.sections import DataConfig


def build_ray_datasets(source: DataSource, config: DataConfig, seed: int) -> dict[str, ray.data.Dataset]:
    """``{"train": ..., "val": ...}``, materialized so epochs do not re-read Parquet.

    Materializing also keeps Ray Data tasks from competing with the Train workers for
    CPUs mid-run (a full Train run on a small machine otherwise starves them).
    """
    # Ray Data's V1 Parquet reader (a documented switch), in every process that reads (the
    # driver, a Tune trial): the V2 default lists files in a task whose thread pool waits out
    # a 2 s join timeout, so a read of the built-in digits took 2.5-5.5 s against 0.1 s.
    ray.data.DataContext.get_current().use_datasource_v2 = False
    if source.train_files:  # an image folder: the files' bytes, decoded on Ray Data's workers
        train = _read_files(source.train_files, source.columns(extra=True))
    else:
        train = _read(source.train_path, source.columns(extra=True))
    if source.val_files:
        val = _read_files(source.val_files, source.columns(extra=False))
    elif source.val_path is not None:
        val = _read(source.val_path, source.columns(extra=False))
    else:
        train, val = train.train_test_split(test_size=config.val_fraction, shuffle=True, seed=seed)
    if config.max_samples is not None:
        train = train.limit(config.max_samples)
    if config.max_val_samples is not None:
        val = val.limit(config.max_val_samples)
    return {"train": train.materialize(), "val": val.materialize()}


def _read_files(files: tuple[str, ...], layout: ColumnLayout) -> ray.data.Dataset:
    dataset = ray.data.read_binary_files(list(files), include_paths=True)  # columns: bytes, path
    return dataset.map_batches(normalise, batch_format="pyarrow", fn_kwargs={"layout": layout})


def _read(path: str, layout: ColumnLayout) -> ray.data.Dataset:
    dataset = ray.data.read_parquet(path, columns=layout.columns)
    # the user's columns -> features / label, on Ray Data's workers (data/columns.py)
    return dataset.map_batches(normalise, batch_format="pyarrow", fn_kwargs={"layout": layout})
