"""A watchdog that removes a private Ray's processes once the driver that started it is gone.

Ray ties its GCS and raylet to the driver (they die with it), but the raylet's own
children, the DashboardAgent and the RuntimeEnvAgent, outlive a driver killed with
SIGKILL, each holding sockets and memory until someone kills them by hand. So
``rayeffi run`` starts this watchdog next to a private Ray: a separate process in its
own session (a terminal's Ctrl-C does not reach it) that every ``POLL_S`` seconds
records the driver's descendants, ``(pid, start time)`` pairs so a recycled PID is
never mistaken for one of them. When the driver has exited, however it exited, the
watchdog at once sends SIGTERM to every recorded process still alive, SIGKILL after
``TERM_WAIT_S``, and exits. It does not wait for Ray first: the Train workers do not stop
when their driver is killed (they trained on, an epoch every quarter second, until the
SIGTERM came), and after a clean exit the driver has shut its Ray down already.

Run as ``python rayeffi/driver/supervise.py DRIVER_PID``; :func:`start_watchdog` does that.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5
TERM_WAIT_S = 5.0

Process = tuple[int, int]
"""``(pid, start time in clock ticks since boot)``: a process, not just a number."""


def start_watchdog(driver_pid: int | None = None) -> subprocess.Popen | None:
    """Start the watchdog for this driver (Linux only: it reads ``/proc``); returns it, or None."""
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen(
        # run as a file: it needs only the standard library, whatever sys.path the driver has
        [sys.executable, str(Path(__file__).resolve()), str(driver_pid or os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )


def stat_fields(pid: int) -> tuple[int, int] | None:
    """``(parent pid, start time)`` of ``pid`` from ``/proc/PID/stat``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    if fields[0] == "Z":  # a zombie has exited already: nothing to kill
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> set[Process]:
    """Every living process below ``root`` in the process tree."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields is not None:
                children.setdefault(fields[0], []).append(int(entry))
                starts[int(entry)] = fields[1]
    found: set[Process] = set()
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.add((pid, starts[pid]))
        stack += children.get(pid, [])
    return found


def alive(process: Process) -> bool:
    fields = stat_fields(process[0])
    return fields is not None and fields[1] == process[1]


def reap(processes: set[Process], term_wait_s: float = TERM_WAIT_S) -> None:
    """SIGTERM the processes still alive, then SIGKILL whatever is left after ``term_wait_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        living = [p for p in processes if alive(p)]
        for pid, _ in living:
            try:
                os.kill(pid, sig)
            except OSError:  # gone in between, or not ours
                pass
        deadline = time.monotonic() + term_wait_s
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(alive(p) for p in living):
            time.sleep(0.1)


def watch(driver_pid: int) -> None:
    """Record the driver's descendants until it exits, then remove those still running."""
    driver_fields = stat_fields(driver_pid)
    if driver_fields is None:
        return
    driver = (driver_pid, driver_fields[1])
    seen: set[Process] = set()
    while alive(driver):
        seen |= descendants(driver_pid)
        time.sleep(POLL_S)
    seen.discard((os.getpid(), stat_fields(os.getpid())[1]))
    reap(seen)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the driver's end stops the watchdog
    watch(int(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
