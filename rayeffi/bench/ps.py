"""``rayeffi bench ps``: updates per second and time to a target accuracy, in one run.

Four ways to train the same MLP (64-128-64-10) on the built-in digits with 2 workers,
global batch 64 (32 rows per worker per step), SGD lr 0.05 with momentum 0.9, for the
same number of epochs:

- rayeffi's parameter server, ``sync`` (2 shards): one update per round of 2 gradients;
- rayeffi's parameter server, ``async`` (Downpour, 2 shards, max_staleness 2): one update per push;
- rayeffi's data parallelism (the ``train`` stage, DDP on gloo): one update per step;
- the Ray documentation's parameter server (one server actor, a blocking ``ray.get``
  every step, ``bench/ray_doc_ps.py``).

Updates/s is the median over epochs after the first of (server updates / training
seconds); time to target is the training seconds (start-up and evaluation excluded)
until the validation accuracy first reaches the target. Ratios are printed.
"""

from __future__ import annotations

import statistics
import tempfile

import ray

from rayeffi.bench.ray_doc_ps import run_baseline
from rayeffi.recipe import validate_recipe
from rayeffi.driver.run import run_recipe
from rayeffi.stages.ray_session import start_ray

TARGET = 0.9


def bench_recipe(parallel: dict, epochs: int, num_workers: int):
    return validate_recipe({
        "name": "bench-ps",
        "seed": 0,
        "data": {"dataset": "digits", "batch_size": 32 * num_workers},
        "model": {"name": "mlp", "hidden_sizes": [128, 64]},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "scaling": {"num_workers": num_workers, "resources_per_worker": {"CPU": 0.5}},
        "parallel": parallel,
        "stages": [{"name": "train", "kind": "train", "epochs": epochs}],
    })


def _summarise(history: list[dict], updates_per_epoch=None) -> dict[str, float]:
    rates, elapsed, time_to_target = [], 0.0, None
    for row in history:
        updates = row["server_updates"] if updates_per_epoch is None else updates_per_epoch
        rates.append(updates / row["epoch_s"])
        elapsed += row["epoch_s"]
        if time_to_target is None and row["val_accuracy"] >= TARGET:
            time_to_target = elapsed
    return {"updates_per_s": statistics.median(rates[1:] or rates), "time_to_target_s": time_to_target,
            "val_accuracy": history[-1]["val_accuracy"]}


def _run_stage(parallel: dict, epochs: int, num_workers: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="rayeffi-bench-ps-") as out:
        return run_recipe(bench_recipe(parallel, epochs, num_workers), out, echo=lambda line: None)["stages"][0]["history"]


def _fmt(value) -> str:
    return f"{value:8.2f}" if value is not None else "   never"


def run(args) -> None:
    epochs, num_workers = (3 if args.quick else 10), args.workers
    started = start_ray(None, 4)
    try:
        ps = {"strategy": "param_server", "num_servers": 2}
        results = {
            "ps sync": _summarise(_run_stage({**ps, "mode": "sync"}, epochs, num_workers)),
            "ps async": _summarise(_run_stage({**ps, "mode": "async", "max_staleness": 2}, epochs, num_workers)),
        }
        steps = -(-(1437 // num_workers) // 32)
        results["data parallel"] = _summarise(_run_stage({"strategy": "data_parallel"}, epochs, num_workers), steps)
        results["ray docs ps"] = run_baseline(bench_recipe({}, epochs, num_workers).stages[0], num_workers, TARGET)
    finally:
        if started:
            ray.shutdown()
    print(f"workload: MLP 64-128-64-10 on the digits, {num_workers} workers, global batch {32 * num_workers}, "
          f"SGD lr 0.05 momentum 0.9, {epochs} epochs; target val_accuracy {TARGET}")
    print(f"{'':16}{'updates/s':>10}{'to target (s)':>15}{'final acc':>11}")
    for name, row in results.items():
        print(f"{name:16}{row['updates_per_s']:10.1f}{_fmt(row['time_to_target_s']):>15}{row['val_accuracy']:11.4f}")
    sync, fast, baseline = results["ps sync"], results["ps async"], results["ray docs ps"]
    print(f"async / sync updates/s      : {fast['updates_per_s'] / sync['updates_per_s']:6.2f}x (goal >= 1.6x)")
    print(f"async / ray docs updates/s  : {fast['updates_per_s'] / baseline['updates_per_s']:6.2f}x")
    print(f"sync / ray docs updates/s   : {sync['updates_per_s'] / baseline['updates_per_s']:6.2f}x")
    if fast["time_to_target_s"] and baseline["time_to_target_s"]:
        print(f"ray docs / async time to target: {baseline['time_to_target_s'] / fast['time_to_target_s']:6.2f}x")
