"""The private Ray under supervision: loopback only, Ctrl-C, a killed driver (real runs, ~1 min each).

Each test starts ``rayeffi run`` as a terminal would (its own process group), waits
for the first epoch line, then interrupts or kills it; every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from rayeffi.driver.supervise import descendants
from helpers.processes import RunningCommand, is_loopback, listening_sockets, wait_until_gone

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("own_ray")]  # no other Ray beside the runs it checks

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 480  # a 2-core machine shared with other Ray runs took minutes to start Ray
GONE_TIMEOUT_S = 45
WORKERS_GONE_BOUND_S = 15  # the watchdog polls every 0.5 s, waits 5 s after its SIGTERM, then kills
LATE_CHECKPOINT_MARGIN_S = 1.0  # a checkpoint being written at the kill may land just after it


def _start(out: Path, epochs: int = 30) -> RunningCommand:
    argv = [sys.executable, "-m", "rayeffi", "run", str(ROOT / "examples/quickstart.yaml"),
            "--set", "data.max_samples=512", "--set", f"stages.train.epochs={epochs}",
            "--set", "model.hidden_sizes=[512, 512]", "--out", str(out)]
    return RunningCommand(argv)


@pytest.fixture
def run(tmp_path):
    running = _start(tmp_path / "out")
    yield running
    running.kill_group()


def test_ctrl_c_stops_keeps_the_checkpoint_and_leaves_no_process(run, tmp_path):
    run.wait_for_line("[train] epoch 2", START_TIMEOUT_S)
    sockets = listening_sockets(pid for pid, _ in run.seen | descendants(run.process.pid))
    os.killpg(run.process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole foreground group
    code = run.wait(timeout_s=90)
    assert code == 130, (run.stdout[-5:], run.stderr[-20:])
    assert run.stderr[-1].startswith("interrupted: resume with rayeffi run "), run.stderr[-10:]
    assert run.stderr[-1].endswith("--resume")
    assert wait_until_gone(run.seen, GONE_TIMEOUT_S) == []
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert list((tmp_path / "out/ray").glob("train-*/checkpoint_*/state.pt")), "the last checkpoint is kept"
    # the same run listened on loopback only while it trained
    assert sockets, "found no listening socket at all: the check is looking in the wrong place"
    exposed = [s for s in sockets if not is_loopback(s[1])]  # e.g. torch's rendezvous store on '::'
    assert not exposed, f"a process of the run listened beyond loopback: {exposed} (pid, address, port)"


def _train_workers(processes) -> set:
    """The processes among ``processes`` that are Ray Train workers (Ray names them ``ray::RayTrainWorker...``)."""
    found = set()
    for pid, start in processes:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if command.startswith(b"ray::") and b"TrainWorker" in command:
            found.add((pid, start))
    return found


def test_a_killed_driver_leaves_no_process(run, tmp_path):
    run.wait_for_line("[train] epoch 1", START_TIMEOUT_S)
    run.seen |= descendants(run.process.pid)
    assert len(run.seen) >= 5, run.seen  # the watchdog, GCS, raylet, agents, workers
    workers = _train_workers(run.seen)
    assert len(workers) == 2, f"expected the stage's 2 Train workers among {len(run.seen)} processes"
    killed_at, killed_clock = time.time(), time.monotonic()
    os.kill(run.process.pid, signal.SIGKILL)
    run.wait(timeout_s=30)
    assert wait_until_gone(workers, GONE_TIMEOUT_S) == []
    workers_gone_s = time.monotonic() - killed_clock
    assert wait_until_gone(run.seen, GONE_TIMEOUT_S) == []
    all_gone_s = time.monotonic() - killed_clock
    checkpoints = list((tmp_path / "out/ray").glob("train-*/checkpoint_*/state.pt"))
    last_checkpoint_s = max(path.stat().st_mtime for path in checkpoints) - killed_at
    print(f"driver SIGKILL -> last Train worker gone: {workers_gone_s:.1f} s, last process gone: "
          f"{all_gone_s:.1f} s, last checkpoint written: {last_checkpoint_s:+.2f} s")
    assert workers_gone_s < WORKERS_GONE_BOUND_S, f"Train workers ran on {workers_gone_s:.1f} s without their driver"
    assert all_gone_s < WORKERS_GONE_BOUND_S, f"processes of the run lived {all_gone_s:.1f} s after their driver"
    # the workers did not train on unwatched: no checkpoint (one per epoch) written after the
    # kill, beyond one that was being written at that moment
    late = [path for path in checkpoints if path.stat().st_mtime > killed_at + LATE_CHECKPOINT_MARGIN_S]
    assert not late, (f"workers wrote {len(late)} checkpoints after their driver was killed at {killed_at:.2f}: "
                      f"{sorted(round(path.stat().st_mtime - killed_at, 2) for path in late)} s after it")


TUNED = """
name: tuned-interrupt
data: {max_samples: 512, batch_size: 64}
model: {name: mlp, hidden_sizes: [512, 512]}
scaling: {num_workers: 1}
stages:
  - name: search
    kind: train
    epochs: 30
    tune:
      search_space: {optimizer.lr: {grid: [0.05, 0.1]}}
      num_samples: 1
      metric: val_loss
      mode: min
      max_concurrent_trials: 2
"""


def test_ctrl_c_during_a_tuned_stage_stops_it_and_picks_no_trial(tmp_path):
    recipe = tmp_path / "tuned.yaml"
    recipe.write_text(TUNED)
    run = RunningCommand([sys.executable, "-m", "rayeffi", "run", str(recipe), "--out", str(tmp_path / "out")])
    try:
        run.wait_for_line("[search/", START_TIMEOUT_S)  # a trial's first epoch line
        run.seen |= descendants(run.process.pid)
        os.killpg(run.process.pid, signal.SIGINT)
        code = run.wait(timeout_s=90)
        assert code == 130, (run.stdout[-5:], run.stderr[-20:])
        assert run.stderr[-1].startswith("interrupted: resume with rayeffi run "), run.stderr[-10:]
        assert wait_until_gone(run.seen, GONE_TIMEOUT_S) == []
        summary = json.loads((tmp_path / "out/summary.json").read_text())
        assert summary["status"] == "interrupted"
        assert not any(stage.get("best_trial") for stage in summary["stages"]), "an interrupted search chose a trial"
        assert not any("done in" in line for line in run.stdout), run.stdout[-5:]
    finally:
        run.kill_group()
