"""``rayeffi bench startup``: how long local mode takes to answer, against 2 Ray Train workers.

Both arms are the command a user types, run as subprocesses in the same run:

    rayeffi run examples/quickstart.yaml --smoke --set scaling.num_workers=0    (local mode)
    rayeffi run examples/quickstart.yaml --smoke --set scaling.num_workers=2    (the baseline)

Each arm's wall time is the median of ``--repeats`` runs (alternating, so a busy spell of the
machine falls on both); the ratio local / workers is printed against its goal (<= 0.3).
While the local-mode runs go, a thread scans ``/proc`` for a Ray process (GCS, raylet,
dashboard, a Ray worker) started by them: there must be none (local mode runs in the
driver's process, ``stages/local_run.py``). The same scan must find them in the baseline's
runs, which shows the scan sees what it looks for.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

from rayeffi.errors import UserError

GOAL_RATIO = 0.3
SCAN_S = 0.05
RAY_PROCESS_MARKERS = ("raylet", "gcs_server", "ray::", "dashboard/", "default_worker.py", "runtime_env/agent")
"""Substrings of the command line of Ray's own processes."""


def quickstart_recipe() -> Path:
    """``examples/quickstart.yaml`` of this checkout (the bench runs from anywhere)."""
    return Path(str(resources.files("rayeffi"))).parent / "examples" / "quickstart.yaml"


def run_command(recipe: Path, num_workers: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "rayeffi", "run", str(recipe), "--smoke", "--set",
            f"scaling.num_workers={num_workers}", "--out", str(out)]


def descendants(root: int) -> dict[int, str]:
    """``{pid: command line}`` of every living process descended from ``root`` (Linux ``/proc``)."""
    parents, commands = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended while being read
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found[child] = commands.get(child, "")
                frontier.append(child)
    return found


def timed_run(command: list[str], cwd: Path) -> tuple[float, set[str]]:
    """Wall seconds of ``command`` and the kinds of Ray process (``RAY_PROCESS_MARKERS``) seen among
    its descendants while it ran."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[str] = set()
    done = threading.Event()

    def scan() -> None:
        while not done.is_set():
            seen.update(marker for command in descendants(process.pid).values()
                        for marker in RAY_PROCESS_MARKERS if marker in command)
            time.sleep(SCAN_S)

    scanner = threading.Thread(target=scan, daemon=True)
    scanner.start()
    output, _ = process.communicate()
    wall_s = time.perf_counter() - start
    done.set()
    scanner.join()
    if process.returncode != 0:
        raise UserError(f"bench startup: {' '.join(command[2:])} exited {process.returncode}: "
                        f"{(output.strip().splitlines() or [''])[-1]}")
    return wall_s, seen


def run(args) -> None:
    if not Path("/proc").is_dir():
        raise UserError("bench startup scans /proc for Ray's processes: run it on Linux")
    repeats = 1 if args.quick else args.repeats
    recipe = quickstart_recipe()
    if not recipe.is_file():
        raise UserError(f"bench startup times {recipe}, which this installation lacks: run it from a checkout")
    walls: dict[int, list[float]] = {0: [], args.workers: []}
    seen: dict[int, set[str]] = {0: set(), args.workers: set()}
    with tempfile.TemporaryDirectory(prefix="rayeffi-bench-startup-") as tmp:
        for repeat in range(repeats):
            for num_workers in (0, args.workers):
                out = Path(tmp) / f"w{num_workers}-{repeat}"
                wall_s, ray_processes = timed_run(run_command(recipe, num_workers, out), Path(tmp))
                walls[num_workers].append(wall_s)
                seen[num_workers] |= ray_processes
                print(f"  {'local mode' if num_workers == 0 else f'{num_workers} workers':>10}, run {repeat + 1}: "
                      f"{wall_s:.1f} s", flush=True)
    local_s, workers_s = statistics.median(walls[0]), statistics.median(walls[args.workers])
    print(f"rayeffi run {recipe.name} --smoke, wall time (median of {repeats}; machine load "
          f"{os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs):")
    print(f"  local mode (scaling.num_workers=0): {local_s:.1f} s")
    print(f"  {args.workers} Ray Train workers:             {workers_s:.1f} s")
    ratio = local_s / workers_s
    print(f"ratio local / {args.workers} workers: {ratio:.2f} (goal <= {GOAL_RATIO}: "
          f"{'met' if ratio <= GOAL_RATIO else 'not met'})")
    print(f"Ray processes during the local-mode runs: {sorted(seen[0]) or 'none'}; "
          f"during the {args.workers}-worker runs: {sorted(seen[args.workers])}")
    if seen[0]:
        raise UserError(f"bench startup: local mode started Ray processes: {sorted(seen[0])}")
    if not seen[args.workers]:
        raise UserError("bench startup: the /proc scan saw no Ray process in the worker runs either: it sees nothing")
