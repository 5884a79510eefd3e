"""Checked Parquet sources -> the Ray Data datasets a Train run shards over its workers."""

from __future__ import annotations

import pyarrow as pa
import ray.data

from rayeffi.data.sources import DataSource
from rayeffi.recipe.sections import DataConfig

FEATURES, LABEL = "features", "label"
"""Column names every worker reads, whatever the user's Parquet calls them."""


def build_ray_datasets(source: DataSource, config: DataConfig, seed: int) -> dict[str, ray.data.Dataset]:
    """``{"train": ..., "val": ...}``, materialized so epochs do not re-read Parquet.

    Materializing also keeps Ray Data tasks from competing with the Train workers for
    CPUs mid-run (a full Train run on a small machine otherwise starves them).
    """
    train = _read(source.train_path, source, source.extra_columns)
    if source.val_path is not None:
        val = _read(source.val_path, source)
    else:
        train, val = train.train_test_split(test_size=config.val_fraction, shuffle=True, seed=seed)
    if config.max_samples is not None:
        train = train.limit(config.max_samples)
    return {"train": train.materialize(), "val": val.materialize()}


def _read(path: str, source: DataSource, extra_columns: tuple[str, ...] = ()) -> ray.data.Dataset:
    columns = [source.feature_column, source.label_column, *extra_columns]
    dataset = ray.data.read_parquet(path, columns=columns)
    width = source.info.num_features
    return dataset.map_batches(
        _normalise_columns,
        batch_format="pyarrow",
        fn_kwargs={
            "feature_column": source.feature_column,
            "label_column": source.label_column,
            "width": width,
            "extra_columns": extra_columns,
        },
    )


def _normalise_columns(
    batch: pa.Table, feature_column: str, label_column: str, width: int, extra_columns: tuple[str, ...] = ()
) -> pa.Table:
    """Rename to ``features``/``label`` and make features a fixed-width float32 list."""
    features = batch[feature_column].combine_chunks()
    target_type = pa.list_(pa.float32(), width)
    if features.type != target_type:
        values = features.flatten().cast(pa.float32())
        features = pa.FixedSizeListArray.from_arrays(values, width)
    columns = {FEATURES: features, LABEL: batch[label_column].cast(pa.int64())}
    return pa.table({**columns, **{name: batch[name] for name in extra_columns}})
