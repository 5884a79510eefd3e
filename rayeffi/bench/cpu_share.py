"""Which processes used the CPUs while a benchmark arm ran: ``rayeffi bench ddp --cpu-share``.

A thread reads every process's CPU time from Linux's ``/proc`` once a second; the share
is taken over the arm's steady epochs (``window_s`` seconds before the last epoch ended).
On 2 cores shared by 2 single-threaded workers, any other process's CPU is time one of
them is descheduled, and the other then waits for it at the next all-reduce.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

PROC = Path("/proc")
SAMPLE_S = 1.0
MIN_WINDOW_S = 3.0


def available() -> bool:
    return (PROC / "stat").is_file()


def process_name(cmdline: str) -> str:
    """A short name: Ray's own (``ray::RayTrainWorker``), else the program and its script."""
    parts = cmdline.split()
    if not parts:
        return "(kernel thread)"
    if parts[0].startswith("ray::"):
        return parts[0].split(".")[0]
    words = [os.path.basename(part) for part in parts[:3] if not part.startswith("-")]
    return " ".join(words[:2]) or parts[0]


def _cpu_seconds(pid: str) -> float | None:
    try:
        fields = (PROC / pid / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _machine_seconds() -> tuple[float, float]:
    """(all CPU time, idle CPU time) of the machine so far, in seconds."""
    values = [int(value) for value in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(values) / ticks, (values[3] + values[4]) / ticks  # idle + iowait


class CpuSampler:
    """``with CpuSampler() as sampler: ...`` then ``sampler.share(window_s)``."""

    def __init__(self):
        self.samples: list[tuple[float, dict[str, float], tuple[float, float]]] = []
        self.names: dict[str, str] = {}  # pid -> its latest name (a Ray worker renames itself; an exited one keeps it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_S)

    def _sample(self) -> None:
        times = {}
        for pid in (entry.name for entry in PROC.iterdir() if entry.name.isdigit()):
            seconds = _cpu_seconds(pid)
            if seconds is None:
                continue
            try:
                cmdline = (PROC / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmdline.strip() or pid not in self.names:  # a zombie's cmdline is empty: keep its name
                self.names[pid] = process_name(cmdline)
            times[pid] = seconds
        self.samples.append((time.monotonic(), times, _machine_seconds()))

    def share(self, window_s: float, end: float | None = None) -> tuple[float, float, list[tuple[float, str]]]:
        """(window seconds, machine busy fraction, [(cpu seconds, process name), ...] largest first)
        over the ``window_s`` seconds sampled before ``end`` (``time.monotonic()``; default:
        the last sample)."""
        end = self.samples[-1][0] if end is None else end
        window_s = max(window_s, MIN_WINDOW_S)  # epochs shorter than the sampling interval: a few samples
        start = min(self.samples, key=lambda sample: abs(sample[0] - (end - window_s)))
        later = [sample for sample in self.samples if start[0] < sample[0] <= end + SAMPLE_S / 2] or self.samples[-1:]
        last: dict[str, float] = {}
        for _, times, _ in later:
            last.update(times)  # a process that exited keeps its last reading
        used: Counter[str] = Counter()
        for pid, seconds in last.items():
            used[self.names.get(pid, pid)] += seconds - start[1].get(pid, 0.0)
        total, idle = (after - before for after, before in zip(later[-1][2], start[2]))
        return later[-1][0] - start[0], (total - idle) / total if total else 0.0, \
            [(seconds, name) for name, seconds in used.most_common() if seconds > 0]


def print_share(label: str, sampler: CpuSampler, window_s: float, end: float | None = None, rows: int = 12) -> None:
    window, busy, used = sampler.share(window_s, end)
    print(f"cpu share, {label}: {window:.1f} s over its steady epochs ({MIN_WINDOW_S:g} s at least), "
          f"machine busy {busy:.1%}")
    for seconds, name in used[:rows]:
        if seconds >= 0.05:
            print(f"  {seconds:7.2f} cpu-s  {seconds / window:6.1%} of a core  {name}")
