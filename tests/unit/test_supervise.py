"""The watchdog of a private Ray, on plain processes (no Ray, a few seconds)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from rayeffi.driver.supervise import alive, descendants, start_watchdog, stat_fields

DRIVER = """
import subprocess, sys, time
# a grandchild that outlives its parent, as Ray's agents outlive the raylet
subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                  "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)"])
time.sleep(300)
"""


def _wait(predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_a_killed_driver_leaves_nothing_behind():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER])
    watchdog = start_watchdog(driver.pid)
    tree = set()
    try:
        assert _wait(lambda: len(descendants(driver.pid)) >= 2, 30), "the fake driver did not start its tree"
        tree = descendants(driver.pid)
        time.sleep(1.5)  # the watchdog polls every 0.5 s: let it record the tree
        driver.kill()
        driver.wait(timeout=30)
        assert _wait(lambda: not any(alive(p) for p in tree), 30), [p for p in tree if alive(p)]
        assert watchdog.wait(timeout=30) == 0  # and the watchdog itself ends
    finally:
        for pid, _ in descendants(driver.pid) | tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_a_recycled_pid_is_not_the_same_process():
    me = (os.getpid(), stat_fields(os.getpid())[1])
    assert alive(me)
    assert not alive((me[0], me[1] + 1))


def test_loopback_switch_is_restored_after_start(monkeypatch):
    from ray._private import ray_constants

    from rayeffi.stages import ray_session

    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    before = ray_constants.ENABLE_RAY_CLUSTER
    with ray_session.loopback_only():
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
        from ray._private.services import get_node_ip_address
        assert get_node_ip_address() == "127.0.0.1"
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    assert ray_constants.ENABLE_RAY_CLUSTER == before
