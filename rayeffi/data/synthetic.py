"""A synthetic classification set of any size, written to Parquet shards.

Each class is a Gaussian blob around its own random centre, so a model can learn it
and accuracy means something, while the size is free for benchmarks.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayeffi.recipe.sections import SyntheticDataConfig


def synthetic_arrays(config: SyntheticDataConfig, num_rows: int, seed: int, split: str):
    """Features ``[num_rows, num_features]`` (float32) and labels ``[num_rows]`` (int64)."""
    centres = np.random.default_rng(seed).normal(0.0, 1.0, (config.num_classes, config.num_features))
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    labels = rng.integers(0, config.num_classes, num_rows)
    features = centres[labels] + rng.normal(0.0, 1.5, (num_rows, config.num_features))
    return features.astype(np.float32), labels.astype(np.int64)


def write_synthetic(config: SyntheticDataConfig, seed: int, cache_dir: Path) -> tuple[str, str]:
    """Write (once) the train shards and one validation file; return their paths."""
    key = hashlib.sha1(f"{config.model_dump_json()}-{seed}".encode()).hexdigest()[:12]
    root = Path(cache_dir) / f"synthetic-{key}"
    train_dir, val_file = root / "train", root / "val.parquet"
    if val_file.exists():
        return str(train_dir), str(val_file)
    train_dir.mkdir(parents=True, exist_ok=True)
    features, labels = synthetic_arrays(config, config.num_samples, seed, "train")
    for shard, rows in enumerate(np.array_split(np.arange(config.num_samples), config.num_shards)):
        _write_atomic(features[rows], labels[rows], train_dir / f"part-{shard:05d}.parquet")
    features, labels = synthetic_arrays(config, max(config.num_samples // 5, 1), seed, "val")
    _write_atomic(features, labels, val_file)  # written last: its presence marks the set complete
    return str(train_dir), str(val_file)


def _write_atomic(features: np.ndarray, labels: np.ndarray, path: Path) -> None:
    column = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), features.shape[1])
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.table({"features": column, "label": labels}), tmp)
    os.replace(tmp, path)
