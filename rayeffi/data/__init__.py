"""Datasets: the built-in digits, a user's Parquet, and synthetic data of any size."""

from rayeffi.data.info import DatasetInfo
from rayeffi.data.sources import DataSource, builtin_digits_paths, resolve_source
from rayeffi.data.synthetic import synthetic_arrays, write_synthetic

__all__ = ["DataSource", "DatasetInfo", "builtin_digits_paths", "resolve_source", "synthetic_arrays", "write_synthetic"]
