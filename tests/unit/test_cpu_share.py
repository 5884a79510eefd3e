"""``rayeffi bench ddp --cpu-share``: the sampler finds the process that used the CPU."""

from __future__ import annotations

import os
import time

import pytest

from rayeffi.bench import cpu_share

pytestmark = pytest.mark.skipif(not cpu_share.available(), reason="reads Linux's /proc")


def test_names_are_short_and_ray_names_kept():
    assert cpu_share.process_name("ray::RayTrainWorker.run_train_fn") == "ray::RayTrainWorker"
    assert cpu_share.process_name("/venv/bin/python -u /x/ray/dashboard/agent.py --x=1") == "python agent.py"
    assert cpu_share.process_name("/x/core/src/ray/raylet/raylet --raylet_socket_name=/tmp/s") == "raylet"
    assert cpu_share.process_name("") == "(kernel thread)"


def test_a_busy_process_shows_its_cpu_seconds():
    with cpu_share.CpuSampler() as sampler:
        end = time.monotonic() + 2.5
        while time.monotonic() < end:  # busy: about one core for 2.5 s
            pass
    window, busy, used = sampler.share(2.0)
    mine = sampler.names[str(os.getpid())]
    seconds = sum(cpu for cpu, name in used if name == mine)
    assert 1.5 <= window <= 3.5 and 0 < busy <= 1
    assert seconds >= 0.6 * window, (seconds, window, used[:5])
    assert [cpu for cpu, _ in used] == sorted((cpu for cpu, _ in used), reverse=True)
