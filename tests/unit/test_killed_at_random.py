"""A driver killed (SIGKILL) at random points of a run, resumed each time, ends with the
uninterrupted run's record: every epoch of every stage once, the same losses, the same weights.

Local mode (no Ray): the driver is the process that trains, so a kill can land anywhere, in a
step, in a checkpoint write, between stages. The points are drawn from a seed printed with
each failure (``RAYEFFI_KILL_SEED`` replays one).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch

from rayeffi.checkpoint import load_checkpoint
from rayeffi.driver.resume import PROGRESS_FILE
from helpers.processes import RunningCommand

KILLS = 3
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line as it is printed: the kill follows the run
RECIPE = """seed: 3
data: {dataset: digits, batch_size: 64, max_samples: 1024}
model: {name: mlp, hidden_sizes: [1024, 1024], dropout: 0.1}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
scaling: {num_workers: 0}
stages:
  - {name: dense, kind: train, epochs: 5}
  - {name: tuned, kind: train, epochs: 4, init_from: previous, optimizer: {lr: 0.01}}
"""


def _records(out: Path) -> dict[str, list[tuple[int, float, float]]]:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete", summary.get("error")
    return {stage["name"]: [(row["epoch"], row["train_loss"], row["val_loss"]) for row in stage["history"]]
            for stage in summary["stages"]}


def _progress_epochs(out: Path) -> dict[str, list[int]]:
    """The epochs progress.jsonl holds per stage, each once, in order of first appearance."""
    epochs: dict[str, list[int]] = {}
    for line in (out / PROGRESS_FILE).read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if "epoch" in event and "event" not in event and event["epoch"] not in epochs.setdefault(event["stage"], []):
            epochs[event["stage"]].append(event["epoch"])
    return epochs


def test_a_run_killed_at_random_points_and_resumed_keeps_every_epoch(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    straight = tmp_path / "straight"
    run = RunningCommand([sys.executable, "-m", "rayeffi", "run", str(recipe), "--out", str(straight)], env=ENV)
    try:
        run.wait_for_line("[dense]", 120)
        began = time.monotonic()
        assert run.wait(timeout_s=240) == 0, run.stderr[-5:]
        span = time.monotonic() - began  # from the first stage's first line to the end: where kills land
    finally:
        run.kill_group()
    want = _records(straight)
    assert {name: [epoch for epoch, *_ in rows] for name, rows in want.items()} == {"dense": [1, 2, 3, 4, 5],
                                                                                 "tuned": [1, 2, 3, 4]}

    seed = int(os.environ.get("RAYEFFI_KILL_SEED", random.SystemRandom().randrange(2**32)))
    draw = random.Random(seed)
    out = tmp_path / "killed"
    killed_at = []
    for attempt in range(KILLS + 1):
        resume = (out / "summary.json").exists()
        run = RunningCommand([sys.executable, "-m", "rayeffi", "run", str(recipe), "--out", str(out),
                              *(["--resume"] if resume else ["--overwrite"])], env=ENV)
        try:
            if attempt == KILLS:
                code = run.wait(timeout_s=240)
                assert code == 0, (seed, killed_at, run.stdout[-5:], run.stderr[-5:])
                break
            run.wait_for_line("[dense]" if not resume else "", 120)  # training (or the resume) has begun
            delay = draw.uniform(0.0, span)
            time.sleep(delay)
            line = run.stdout[-1] if run.stdout else ""
            if run.process.poll() is None:
                os.kill(run.process.pid, signal.SIGKILL)
            killed_at.append((round(delay, 2), line))
            run.wait(timeout_s=60)
        finally:
            run.kill_group()
        if run.process.returncode == 0:  # it finished before the kill landed
            break
    got = _records(out)
    context = f"seed {seed}, killed after (seconds of {span:.1f}, last line): {killed_at}"
    print(context)
    assert [[epoch for epoch, *_ in rows] for rows in got.values()] == [[1, 2, 3, 4, 5], [1, 2, 3, 4]], context
    for name in want:
        for (epoch, loss, val), (_, loss_got, val_got) in zip(want[name], got[name]):
            assert abs(loss - loss_got) < 1e-6 and abs(val - val_got) < 1e-6, (name, epoch, context)
    assert _progress_epochs(out) == {"dense": [1, 2, 3, 4, 5], "tuned": [1, 2, 3, 4]}, context
    summary = json.loads((out / "summary.json").read_text())
    weights = load_checkpoint(summary["stages"][-1]["checkpoint"])["model"]
    reference = load_checkpoint(json.loads((straight / "summary.json").read_text())["stages"][-1]["checkpoint"])
    for name, value in reference["model"].items():
        assert torch.equal(weights[name], value), (name, context)
