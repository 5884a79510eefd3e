"""Datasets: the built-in digits, a user's Parquet, and synthetic data of any size.

Names are imported on first use, so ``rayeffi.data.info`` (the dataset's shape, which
the models and the step's slots need) imports without pydantic or Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayeffi._lazy import lazy_getattr

_PUBLIC = {
    "DataSource": "rayeffi.data.sources",
    "DatasetInfo": "rayeffi.data.info",
    "builtin_digits_paths": "rayeffi.data.sources",
    "resolve_source": "rayeffi.data.sources",
    "synthetic_arrays": "rayeffi.data.synthetic",
    "write_synthetic": "rayeffi.data.synthetic",
}

__all__ = sorted(_PUBLIC)


__getattr__ = lazy_getattr("rayeffi.data", _PUBLIC, globals())


if TYPE_CHECKING:
    from rayeffi.data.info import DatasetInfo
    from rayeffi.data.sources import DataSource, builtin_digits_paths, resolve_source
    from rayeffi.data.synthetic import synthetic_arrays, write_synthetic
