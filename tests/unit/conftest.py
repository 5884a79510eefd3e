"""The unit tier's one Ray: a private local Ray for a module whose tests run whole recipes
(``rayeffi run`` in local mode), started once for the module instead of once per run
(~8 s each). ``main(["run", ...])`` joins it and leaves it running (rayeffi/driver/run.py stops
only a Ray it started)."""

from __future__ import annotations

import pytest
import ray

from rayeffi.stages.ray_session import start_ray


@pytest.fixture(scope="module")
def module_ray():
    assert not ray.is_initialized(), "a previous module leaked its Ray instance"
    start_ray(address=None, num_cpus_needed=1)
    yield
    ray.shutdown()
