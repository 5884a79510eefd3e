"""``rayeffi bench soak --minutes N``: memory and open descriptors over a long run.

By default, one ``rayeffi run`` of N minutes on a private Ray: a train stage of many short
epochs on 2 Ray Train workers, a DSD stage of many rounds from its weights, and a tuned
stage (2 trials at once). Its length comes from a short warm-up run of the same stages,
timed epoch by epoch. With ``--repeat``, the warm-up recipe runs again and again for N
minutes in the same driver on the same private Ray (the notebook and Python API pattern).
With ``--only STAGE``, the long run is that stage alone (which stage a growth comes with).

A thread samples, every ``SAMPLE_S`` seconds (a run of under 10 minutes: 20 samples at
least), the resident memory (``/proc/PID/status`` VmRSS) and the open file descriptors
(``/proc/PID/fd``) of the driver and of every process below it: the private Ray's GCS,
raylet, dashboard and agents, the progress queue's actor, the Train workers and Tune's
trials, the watchdog.

Printed, from the samples after the warm-up (imports, Ray's pools, the first epochs), for
every process seen in at least ``MIN_SAMPLES`` of them: RSS and descriptors at its first
and last sample and the growth per hour of a least-squares line through its samples, and
through the second half of them ("late"); then the growth of the driver, of the sum over
the processes that lived through every sample, and of the longest-lived Train worker, the
late figure against ``BOUND_MIB_PER_H`` /
``BOUND_FDS_PER_H`` (the bound docs/benchmarks.md states); with ``--repeat``, the peak RSS
of each run's Train workers, first run to last. Then, for the long run, the growth while
each stage trains, from ``STAGE_SETTLE_S`` after its first epoch line to its last: the
driver's, and the sum over the processes alive through that window, against the same
bound; a step between stages (a stage's workers, actors and Tune's experiment starting or
ending) is outside every window, and shows in the whole-run figures above.
``--quick`` (CI's slow tier): about 2 minutes, samples every 5 s: a check that the sampling
and the report work, not a figure.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from rayeffi.bench.cpu_share import process_name
from rayeffi.driver.supervise import descendants, stat_fields

SAMPLE_S = 30.0
QUICK_SAMPLE_S = 5.0
MIN_SAMPLES = 5
STAGE_SETTLE_S = 60.0
"""A stage's first minute (its workers start, Ray Data and Tune set up) is not judged."""
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


STAGE_SHARES = {"dense": 0.6, "dsd": 0.2, "tuned": 0.2}
"""The share of the long run each stage gets (``--only``: one stage gets it all)."""


def long_recipe(minutes: float, epoch_s: float, only: str | None = None) -> dict:
    """The warm-up's stages sized to last about ``minutes``: 60% dense epochs, 20% DSD rounds
    (one sparse and one re-dense epoch each), 20% the tuned stage's epochs (2 trials at once).
    ``only``: that stage alone, from fresh weights, for the whole time (to tell which stage
    a growth comes with)."""
    epochs = 60 * minutes / max(epoch_s, 0.05)
    shares = {only: 1.0} if only else STAGE_SHARES
    raw = recipe(quick=False)
    dense, dsd, tuned = raw["stages"]
    dense["epochs"] = max(4, int(shares.get("dense", 0) * epochs))
    dsd["techniques"][0]["rounds"] = [0.5] * max(2, int(shares.get("dsd", 0) * epochs / 2))
    tuned["epochs"] = max(2, int(shares.get("tuned", 0) * epochs))
    if only:
        kept = next(stage for stage in raw["stages"] if stage["name"] == only)
        kept.pop("init_from", None)
        if only == "dsd":  # its dense weights: one epoch of its own
            kept["techniques"][0]["dense_epochs"] = 1
        raw["stages"] = [kept]
    return raw


def stage_size(stage: dict) -> str:
    """How much of a long run's stage there is, in its own unit."""
    if stage["name"] == "dsd":
        return f"{len(stage['techniques'][0]['rounds'])} DSD rounds"
    return f"2 tuned trials of {stage['epochs']} epochs" if "tune" in stage else f"{stage['epochs']} dense epochs"


def epoch_seconds(moments: list[float]) -> float:
    """The median time between consecutive epoch lines of one stage."""
    gaps = [b - a for a, b in zip(moments, moments[1:])]
    return statistics.median(gaps) if gaps else 1.0


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


def late_half(points: list) -> list:
    """The second half of a series (at least two points): growth there is growth that goes on
    once the caches that fill during the first minutes are full."""
    return points[len(points) // 2:] if len(points) >= 4 else points


def growth(times: list[float], rss: list[float], fds: list[float]) -> tuple[float, float, float, float]:
    """MiB/h and fds/h over the whole series, then over its second half."""
    late_t, late_rss, late_fds = late_half(times), late_half(rss), late_half(fds)
    return (slope_per_hour(times, rss), slope_per_hour(times, fds),
            slope_per_hour(late_t, late_rss), slope_per_hour(late_t, late_fds))


def lasting_totals(window: list) -> tuple[set[Key], list[float], list[int]]:
    """The processes seen in every sample of ``window``, and their summed RSS and descriptors
    sample by sample."""
    lasting = set.intersection(*(set(found) for _, found in window))
    return (lasting, [sum(found[key][1] for key in lasting) for _, found in window],
            [sum(found[key][2] for key in lasting) for _, found in window])


def within_bound(mib_per_h: float, fds_per_h: float) -> bool:
    return abs(mib_per_h) <= BOUND_MIB_PER_H and abs(fds_per_h) <= BOUND_FDS_PER_H


def report(sampler: Sampler, runs: int, minutes: float, skip: int = 0, during_last_run: bool = False) -> None:
    """The growth table from the samples after the first run (and ``skip`` more);
    ``during_last_run``: without the sample taken after the last run ended."""
    start = (sampler.run_marks[1] if len(sampler.run_marks) > 1 else 0) + skip  # after the warm-up
    window = sampler.samples[start:-1 if during_last_run else None]
    print(f"{runs} run(s) in {minutes:.1f} min; {len(window)} samples after the warm-up, every "
          f"{sampler.interval_s:g} s")
    if len(window) < 2:
        print("too few samples after the warm-up for a growth figure: run longer (--minutes)")
        return
    series: dict[Key, list[tuple[float, str, float, int]]] = {}
    for moment, found in window:
        for key, (name, rss, fds) in found.items():
            series.setdefault(key, []).append((moment, name, rss, fds))
    lasting, total_rss, total_fds = lasting_totals(window)
    shown = {key: points for key, points in series.items() if len(points) >= min(MIN_SAMPLES, len(window))}
    print(f"{'process':<30} {'samples':>7} {'RSS MiB first':>13} {'last':>7} {'MiB/h':>8} {'late':>7} "
          f"{'fds first':>9} {'last':>5} {'fds/h':>7} {'late':>6}")
    rows = []
    for key, points in shown.items():
        times, rss, fds = [p[0] for p in points], [p[2] for p in points], [p[3] for p in points]
        rows.append((points[0][1], key, len(points), rss, fds, growth(times, rss, fds)))
    for name, key, count, rss, fds, (mib_h, fds_h, late_mib_h, late_fds_h) in sorted(
            rows, key=lambda r: (r[0] != "driver", -r[3][-1])):
        mark = "" if key in lasting else "*"
        print(f"{(name + mark)[:30]:<30} {count:7d} {rss[0]:13.1f} {rss[-1]:7.1f} {mib_h:+8.1f} {late_mib_h:+7.1f} "
              f"{fds[0]:9d} {fds[-1]:5d} {fds_h:+7.1f} {late_fds_h:+6.1f}")
    print("late: the growth over the second half of the process's samples in the window")
    if len(lasting) < len(shown):
        print(f"* lived through part of the window only (at least {MIN_SAMPLES} samples): growth over its own samples")
    times = [moment for moment, _ in window]
    driver = next(row for row in rows if row[0] == "driver")
    figures = [("driver", driver[5]), (f"all {len(lasting)} long-lived", growth(times, total_rss, total_fds))]
    workers = [row for row in rows if "TrainWorker" in row[0]]
    if workers:  # the longest-lived: the fewest samples give the noisiest slope
        longest = max(workers, key=lambda row: row[2])
        figures.append((f"longest-lived Train worker ({longest[2]} samples)", longest[5]))
    for label, (mib_h, fds_h, late_mib_h, late_fds_h) in figures:
        within = within_bound(late_mib_h, late_fds_h)
        print(f"growth {label}: {late_mib_h:+.1f} MiB/h, {late_fds_h:+.1f} fds/h over the second half "
              f"(whole window {mib_h:+.1f} MiB/h, {fds_h:+.1f} fds/h): {'within' if within else 'OVER'} the bound of "
              f"{BOUND_MIB_PER_H:g} MiB/h and {BOUND_FDS_PER_H:g} fds/h")
    if runs < 2:
        return
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


def stage_of(line: str) -> str | None:
    """The stage an epoch line is of (``[tuned/TRIAL] epoch 3: ...`` -> ``tuned``), or None."""
    if not line.startswith("[") or "] epoch " not in line:
        return None
    return line[1:line.index("]")].split("/")[0]


def epoch_recorder(epochs: dict[str, list[float]]):
    """An ``echo`` for ``run_recipe`` that notes when each epoch line arrives, by stage."""
    def note(line: str) -> None:
        stage = stage_of(line)
        if stage is not None:
            epochs.setdefault(stage, []).append(time.monotonic())
    return note


def stage_windows(epochs: dict[str, list[float]], settle_s: float = STAGE_SETTLE_S) -> list[tuple[str, float, float]]:
    """``(stage, start, end)`` in run order: from ``settle_s`` after a stage's first epoch line
    to its last one (a stage too short for that has none)."""
    return [(stage, moments[0] + settle_s, moments[-1]) for stage, moments in epochs.items()
            if moments[-1] > moments[0] + settle_s]


def report_stages(sampler: Sampler, windows: list[tuple[str, float, float]]) -> None:
    """Growth while each stage trains: the driver, and the sum over the processes that lived
    through the stage's window; a step between stages (new workers, actors, Tune) is not in it."""
    if not windows:
        print(f"no stage trained for over {STAGE_SETTLE_S:g} s: no figure while the stages train")
        return
    print(f"while each stage trains (from {STAGE_SETTLE_S:g} s after its first epoch to its last; "
          f"the sum is over the processes alive throughout):")
    print(f"{'stage':<8} {'minutes':>7} {'samples':>7} {'driver MiB first':>16} {'last':>7} {'MiB/h':>7} "
          f"{'fds/h':>6} {'processes':>9} {'sum MiB/h':>9} {'fds/h':>6}")
    verdicts = []
    for stage, start, end in windows:
        window = [(moment, found) for moment, found in sampler.samples if start <= moment <= end]
        if len(window) < MIN_SAMPLES:
            print(f"{stage:<8} {(end - start) / 60:7.1f} {len(window):7d}   too few samples to judge")
            continue
        times = [moment for moment, _ in window]
        lasting, total_rss, total_fds = lasting_totals(window)
        driver = [next(value for value in found.values() if value[0] == "driver") for _, found in window]
        figures = (slope_per_hour(times, [d[1] for d in driver]), slope_per_hour(times, [d[2] for d in driver]),
                   slope_per_hour(times, total_rss), slope_per_hour(times, total_fds))
        within = within_bound(*figures[:2]) and within_bound(*figures[2:])
        verdicts.append(within)
        print(f"{stage:<8} {(end - start) / 60:7.1f} {len(window):7d} {driver[0][1]:16.1f} {driver[-1][1]:7.1f} "
              f"{figures[0]:+7.1f} {figures[1]:+6.1f} {len(lasting):9d} {figures[2]:+9.1f} {figures[3]:+6.1f}"
              f"  {'within' if within else 'OVER'}")
    if verdicts:
        print(f"growth while the stages train: {'within' if all(verdicts) else 'OVER'} the bound of "
              f"{BOUND_MIB_PER_H:g} MiB/h and {BOUND_FDS_PER_H:g} fds/h ({sum(verdicts)} of {len(verdicts)} stages within)")


def save_samples(sampler: Sampler, path: Path) -> None:
    """Every sample as JSON (``--out``): ``{"interval_s", "run_marks", "samples": [[seconds,
    [[pid, start, name, rss_mib, fds], ...]], ...]}``, to plot or read again."""
    first = sampler.samples[0][0] if sampler.samples else 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "interval_s": sampler.interval_s,
        "run_marks": sampler.run_marks,
        "samples": [[round(moment - first, 1), [[pid, start, name, round(rss, 2), fds]
                                               for (pid, start), (name, rss, fds) in found.items()]]
                    for moment, found in sampler.samples],
    }))


def run(args) -> None:
    from rayeffi.driver.run import run_recipe
    from rayeffi.recipe import validate_recipe
    from rayeffi.stages.ray_session import start_ray

    quick, repeat = args.quick, args.repeat
    minutes = 2.0 if quick else args.minutes
    warmup = validate_recipe(recipe(quick))
    start_ray(None, 2)  # one private Ray for every run (run_recipe joins it; rayeffi bench stops it)
    # a sample every 30 s; a run of under 10 minutes gets at least 20 samples (5 s apart at least)
    sampler = Sampler(QUICK_SAMPLE_S if quick else max(QUICK_SAMPLE_S, min(SAMPLE_S, 3 * minutes)))
    started = time.monotonic()
    runs = 0
    with tempfile.TemporaryDirectory(prefix="rayeffi-soak-") as out, sampler:
        def one_run(checked, echo=lambda line: None) -> dict:
            nonlocal runs
            sampler.run_marks.append(len(sampler.samples))
            summary = run_recipe(checked, Path(out) / f"run-{runs}", echo=echo)
            if summary["status"] != "complete":
                raise RuntimeError(f"soak run {runs} ended {summary['status']}: {summary.get('error')}")
            runs += 1
            print(f"run {runs}: {summary['wall_s']:.1f} s, {len(sampler.samples)} samples so far", flush=True)
            return summary

        warmup_epochs: dict[str, list[float]] = {}
        epochs: dict[str, list[float]] = {}  # the long run's epoch lines' moments, by stage
        one_run(warmup, echo=epoch_recorder(warmup_epochs))
        if repeat:
            while time.monotonic() - started < 60 * minutes:
                one_run(warmup)
        else:
            # --quick: the smallest run of each kind, whatever the warm-up took on a busy machine
            left = 0.05 if quick else max(minutes - (time.monotonic() - started) / 60, 1.0)
            long = long_recipe(left, epoch_seconds(warmup_epochs.get("dense", [])), only=args.only)
            print(f"one run of about {left:.2g} min: {', '.join(map(stage_size, long['stages']))}", flush=True)
            one_run(validate_recipe(long), echo=epoch_recorder(epochs))
    skip = 0 if repeat or quick else round(120 / sampler.interval_s)  # one run: its first two minutes warm up too
    report(sampler, runs, (time.monotonic() - started) / 60, skip, during_last_run=not repeat)
    if epochs:
        report_stages(sampler, stage_windows(epochs))
    if args.out:
        save_samples(sampler, Path(args.out) / "soak-samples.json")
        print(f"samples: {Path(args.out) / 'soak-samples.json'}")
