"""One private local Ray shared by the Ray-tier modules that need a plain one (``local_ray``:
starting Ray costs ~6 s). Its workers can import the test models (``helpers.user_models``).
A module that needs a Ray of its own (a cluster, a head started with ``ray start``, logical
GPUs, a ``rayeffi run`` in a subprocess) asks for ``own_ray`` first, which stops the shared
one; such modules run first (``pytest_collection_modifyitems``), so the shared one starts
once."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from helpers.ray_head import helpers_importable_by_workers
from rayeffi.data import builtin_digits_paths
from rayeffi.stages.ray_session import start_ray


_SHARED = {"started": False}


def pytest_collection_modifyitems(items):
    """The modules that start a Ray of their own run before those that share one, so the
    shared Ray starts once (each start costs ~6-9 s and each stop ~2 s) instead of after
    every own-Ray module. A module's tests stay together and in their order."""
    here = Path(__file__).resolve().parent
    own = {item.path for item in items if "own_ray" in getattr(item, "fixturenames", ())}
    positions = [i for i, item in enumerate(items) if item.path.parent == here]
    ordered = sorted((items[i] for i in positions), key=lambda item: item.path not in own)  # stable
    for i, item in zip(positions, ordered):
        items[i] = item


@pytest.fixture(scope="module")
def local_ray():
    if not _SHARED["started"]:
        assert not ray.is_initialized(), "a previous module leaked its Ray instance"
        with helpers_importable_by_workers():
            start_ray(address=None, num_cpus_needed=3)
        _SHARED["started"] = True
    yield


@pytest.fixture(scope="module")
def own_ray():
    """Stop the shared Ray so a module can start its own (it must leave none behind)."""
    if _SHARED["started"]:
        ray.shutdown()
        _SHARED["started"] = False
    assert not ray.is_initialized(), "a previous module leaked its Ray instance"
    yield


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_ray():
    yield
    if _SHARED["started"]:
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
