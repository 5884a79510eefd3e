"""``rayeffi bench ddp --cpu-share``: the sampler finds the process that used the CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rayeffi.bench import cpu_share

pytestmark = pytest.mark.skipif(not cpu_share.available(), reason="reads Linux's /proc")


def test_names_are_short_and_ray_names_kept():
    assert cpu_share.process_name("ray::RayTrainWorker.run_train_fn") == "ray::RayTrainWorker"
    assert cpu_share.process_name("/venv/bin/python -u /x/ray/dashboard/agent.py --x=1") == "python agent.py"
    assert cpu_share.process_name("/x/core/src/ray/raylet/raylet --raylet_socket_name=/tmp/s") == "raylet"
    assert cpu_share.process_name("") == "(kernel thread)"


BUSY = "import time\nend = time.monotonic() + 2.5\nwhile time.monotonic() < end:\n    pass\n"


def test_a_busy_process_shows_its_cpu_seconds():
    # the busy loop runs in a child: in this process it would hold the GIL the sampler's
    # thread needs after each of its /proc reads, and starve the sampling itself
    with cpu_share.CpuSampler() as sampler:
        child = subprocess.Popen([sys.executable, "-c", BUSY])  # about one core for 2.5 s
        child.wait()
    window, busy, used = sampler.share(2.0)
    mine = sampler.names[str(child.pid)]
    seconds = sum(cpu for cpu, name in used if name == mine)
    assert 1.5 <= window <= 3.5 and 0 < busy <= 1
    assert seconds >= 0.3 * window, (seconds, window, used[:5])  # a busy machine (Ray beside it) shares the cores
    assert [cpu for cpu, _ in used] == sorted((cpu for cpu, _ in used), reverse=True)
