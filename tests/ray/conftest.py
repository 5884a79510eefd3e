"""One private local Ray per test module (starting Ray costs ~6 s)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import ray

from rayeffi.data import builtin_digits_paths

from rayeffi.stages.ray_session import start_ray


@pytest.fixture(scope="module")
def local_ray():
    assert not ray.is_initialized(), "a previous module leaked its Ray instance"
    start_ray(address=None, num_cpus_needed=3)
    yield
    ray.shutdown()


SMALL_TRAIN_ROWS, SMALL_VAL_ROWS = 256, 64


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory):
    """The first 256 training and 64 validation digits as a user Parquet set (train/val.parquet)."""
    root = tmp_path_factory.mktemp("small")
    train, val = (pq.read_table(path) for path in builtin_digits_paths())
    pq.write_table(train.slice(0, SMALL_TRAIN_ROWS), root / "train.parquet")
    pq.write_table(val.slice(0, SMALL_VAL_ROWS), root / "val.parquet")
    return root
