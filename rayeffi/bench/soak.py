"""``rayeffi bench soak --minutes N``: memory and open descriptors over a long run.

One driver process and one private Ray run the same recipe again and again for N minutes:
a train stage of many short epochs on 2 Ray Train workers, a DSD stage (two rounds) from
its weights, and a tuned stage (2 trials). A thread samples, every ``SAMPLE_S`` seconds,
the resident memory (``/proc/PID/status`` VmRSS) and the open file descriptors
(``/proc/PID/fd``) of the driver and of every process below it: the private Ray's GCS,
raylet, dashboard and agents, the progress queue's actor, the Train workers, the watchdog.

Printed, from the samples after the first run (the warm-up: imports, Ray's pools, the
first compiled kernels), per process that lived through all of them (a Train worker lives
for one stage and is measured by its successors): RSS and descriptors at the first and
last sample and the growth per hour of a least-squares line through them; then the
driver's and the sum's growth against ``BOUND_MIB_PER_H`` / ``BOUND_FDS_PER_H`` (the bound
docs/benchmarks.md states), and the peak RSS of each run's Train workers, first run to
last. ``--quick`` (CI's slow tier): about 2 minutes, samples every 5 s: a check that the
sampling and the report work, not a figure.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from rayeffi.bench.cpu_share import process_name
from rayeffi.driver.supervise import descendants, stat_fields

SAMPLE_S = 60.0
QUICK_SAMPLE_S = 5.0
BOUND_MIB_PER_H = 20.0
"""Growth of the driver's RSS, and of the sum over the long-lived processes, that counts as a leak."""
BOUND_FDS_PER_H = 10.0

Key = tuple[int, int]  # (pid, start time): a pid Linux reuses is another process


def recipe(quick: bool) -> dict:
    epochs = 2 if quick else 20
    return {
        "name": "soak",
        "seed": 0,
        "data": {"dataset": "digits", "batch_size": 64, "max_samples": 512},
        "model": {"name": "mlp", "hidden_sizes": [64]},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 0.5}},
        "stages": [
            {"name": "dense", "kind": "train", "epochs": epochs},
            {"name": "dsd", "kind": "train", "init_from": "previous",
             "techniques": [{"name": "dsd", "rounds": [0.5, 0.5], "sparse_epochs": 1, "redense_epochs": 1}]},
            {"name": "tuned", "kind": "train", "epochs": 2, "init_from": "dense",
             "scaling": {"num_workers": 1},
             "tune": {"search_space": {"optimizer.lr": {"grid": [0.01, 0.05]}}, "num_samples": 1,
                      "metric": "val_loss", "mode": "min", "max_concurrent_trials": 2}},
        ],
    }


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return 0.0  # a zombie: no memory left


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Sampler:
    """Every ``interval_s``: ``{(pid, start): (name, rss MiB, fds)}`` of the driver and its descendants."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[Key, tuple[str, float, int]]]] = []
        self.run_marks: list[int] = []  # sample index at which each run began
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rayeffi-soak-sampler", daemon=True)
        self._me = (os.getpid(), stat_fields(os.getpid())[1])

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # the last one, after the last run

    def _loop(self) -> None:
        while not self._stop.wait(0 if not self.samples else self.interval_s):
            self.sample()

    def sample(self) -> None:
        found: dict[Key, tuple[str, float, int]] = {}
        for key in {self._me} | descendants(os.getpid()):
            pid = key[0]
            rss, fds = rss_mib(pid), open_fds(pid)
            if rss is None or fds is None:
                continue
            try:
                name = process_name(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
            found[key] = ("driver" if key == self._me else name, rss, fds)
        self.samples.append((time.monotonic(), found))


def slope_per_hour(times: list[float], values: list[float]) -> float:
    """The least-squares slope of ``values`` over ``times`` (seconds), per hour."""
    if len(times) < 2:
        return 0.0
    mean_t, mean_v = statistics.fmean(times), statistics.fmean(values)
    spread = sum((t - mean_t) ** 2 for t in times)
    if spread == 0:
        return 0.0
    return 3600 * sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values)) / spread


def report(sampler: Sampler, runs: int, minutes: float) -> None:
    start = sampler.run_marks[1] if len(sampler.run_marks) > 1 else 0  # after the warm-up run
    window = sampler.samples[start:]
    print(f"{runs} runs in {minutes:.1f} min; {len(window)} samples after the first run, every "
          f"{sampler.interval_s:g} s")
    if len(window) < 2:
        print("too few samples after the warm-up for a growth figure: run longer (--minutes)")
        return
    times = [moment for moment, _ in window]
    lasting = set(window[0][1]).intersection(*(set(found) for _, found in window[1:]))
    print(f"{'process':<34} {'RSS MiB first':>13} {'last':>8} {'MiB/h':>8} {'fds first':>9} {'last':>5} {'fds/h':>7}")
    total_rss = [0.0] * len(window)
    total_fds = [0.0] * len(window)
    rows = []
    for key in lasting:
        name = window[0][1][key][0]
        rss = [found[key][1] for _, found in window]
        fds = [found[key][2] for _, found in window]
        total_rss = [a + b for a, b in zip(total_rss, rss)]
        total_fds = [a + b for a, b in zip(total_fds, fds)]
        rows.append((name != "driver", -rss[-1], name, rss, fds))
    for _, _, name, rss, fds in sorted(rows):
        print(f"{name[:34]:<34} {rss[0]:13.1f} {rss[-1]:8.1f} {slope_per_hour(times, rss):+8.1f} "
              f"{fds[0]:9d} {fds[-1]:5d} {slope_per_hour(times, fds):+7.1f}")
    driver = next(row for row in rows if row[2] == "driver")
    for label, rss, fds in (("driver", driver[3], driver[4]), (f"all {len(lasting)} long-lived", total_rss, total_fds)):
        mib_h, fds_h = slope_per_hour(times, rss), slope_per_hour(times, fds)
        verdict = "within" if abs(mib_h) <= BOUND_MIB_PER_H and abs(fds_h) <= BOUND_FDS_PER_H else "OVER"
        print(f"growth {label}: {mib_h:+.1f} MiB/h, {fds_h:+.1f} fds/h ({verdict} the bound of "
              f"{BOUND_MIB_PER_H:g} MiB/h and {BOUND_FDS_PER_H:g} fds/h)")
    peaks = []
    for run, first in enumerate(sampler.run_marks):
        last = sampler.run_marks[run + 1] if run + 1 < len(sampler.run_marks) else len(sampler.samples)
        workers = [rss for _, found in sampler.samples[first:last] for name, rss, _ in found.values()
                   if "TrainWorker" in name]
        if workers:
            peaks.append(max(workers))
    if peaks:
        print(f"Train workers' peak RSS per run (MiB): first {peaks[0]:.1f}, last {peaks[-1]:.1f}, "
              f"max {max(peaks):.1f} over {len(peaks)} runs")


def run(args) -> None:
    from rayeffi.driver.run import run_recipe
    from rayeffi.recipe import validate_recipe
    from rayeffi.stages.ray_session import start_ray

    quick = args.quick
    minutes = 2.0 if quick else args.minutes
    checked = validate_recipe(recipe(quick))
    start_ray(None, 2)  # one private Ray for every run (run_recipe joins it; rayeffi bench stops it)
    sampler = Sampler(QUICK_SAMPLE_S if quick else SAMPLE_S)
    started = time.monotonic()
    runs = 0
    with tempfile.TemporaryDirectory(prefix="rayeffi-soak-") as out, sampler:
        while runs == 0 or time.monotonic() - started < 60 * minutes:
            sampler.run_marks.append(len(sampler.samples))
            summary = run_recipe(checked, Path(out) / f"run-{runs}", echo=lambda line: None)
            if summary["status"] != "complete":
                raise RuntimeError(f"soak run {runs} ended {summary['status']}: {summary.get('error')}")
            runs += 1
            print(f"run {runs}: {summary['wall_s']:.1f} s, {len(sampler.samples)} samples so far", flush=True)
    report(sampler, runs, (time.monotonic() - started) / 60)
