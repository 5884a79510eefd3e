"""One private local Ray per test module (starting Ray costs ~6 s)."""

from __future__ import annotations

import pytest
import ray

from rayeffi.stages.ray_session import start_ray


@pytest.fixture(scope="module")
def local_ray():
    assert not ray.is_initialized(), "a previous module leaked its Ray instance"
    start_ray(address=None, num_cpus_needed=3)
    yield
    ray.shutdown()
