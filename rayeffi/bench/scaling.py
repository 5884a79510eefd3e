"""``rayeffi bench scaling``: how a train stage's cost grows with rows, width and workers.

One workload (an MLP on synthetic rows, global batch 256, Ray Train workers of 1 CPU)
varied along one axis at a time from a base point:

- ``rows``: the training set at 1x, 4x and 16x the base rows (2 workers);
- ``width``: the MLP's hidden width (2 workers, base rows);
- ``workers``: 1 and 2 workers on this machine (base rows and width);
- ``multinode``: 2 workers on a 3-node ``ray.cluster_utils.Cluster`` (a head and two
  1-CPU nodes on this machine), the multi-node path with its object transfers.

Each point reports the steady-state seconds per epoch (median epoch after the first)
and samples/s, plus the stage's wall time (Ray Train start-up included). Written: a
table on stdout, ``scaling.json`` and ``scaling.png`` under ``--out``.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rayeffi.bench import steady_epoch_s
from rayeffi.recipe import validate_recipe

BASE_ROWS, QUICK_ROWS = 8192, 1024
ROW_FACTORS = (1, 4, 16)
WIDTHS, BASE_WIDTH = (256, 1024, 4096), 1024
NUM_FEATURES, BATCH = 256, 256


@dataclass
class Point:
    axis: str
    value: int
    rows: int
    width: int
    workers: int
    epoch_s: float
    samples_per_s: float
    wall_s: float
    nodes: int = 1


def scaling_recipe(rows: int, width: int, workers: int, epochs: int):
    return validate_recipe({
        "name": "bench-scaling",
        "seed": 0,
        "data": {"dataset": "synthetic", "batch_size": BATCH, "shuffle": True,
                 "synthetic": {"num_samples": rows, "num_features": NUM_FEATURES, "num_classes": 10,
                               "num_shards": 4}},
        "model": {"name": "mlp", "hidden_sizes": [width, width]},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "scaling": {"num_workers": workers, "resources_per_worker": {"CPU": 1}},
        "stages": [{"name": "train", "kind": "train", "epochs": epochs}],
    })


def measure(axis: str, value: int, rows: int, width: int, workers: int, epochs: int,
            address: str | None = None, nodes: int = 1) -> Point:
    from rayeffi.driver.run import run_recipe

    print(f"-- {axis} = {value}: {rows} rows, MLP width {width}, {workers} worker(s), {nodes} node(s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="rayeffi-bench-scaling-") as out:
        start = time.perf_counter()
        summary = run_recipe(scaling_recipe(rows, width, workers, epochs), out, address=address, echo=lambda line: None)
        wall = time.perf_counter() - start
    history = summary["stages"][0]["history"]
    epoch_s = steady_epoch_s([row["epoch_s"] for row in history])
    point = Point(axis, value, rows, width, workers, epoch_s, rows / epoch_s, wall, nodes)
    print(f"   {epoch_s:7.3f} s/epoch  {point.samples_per_s:9.0f} samples/s  {wall:6.1f} s wall", flush=True)
    return point


def run(args) -> None:
    base = QUICK_ROWS if args.quick else BASE_ROWS
    epochs = 2 if args.quick else 3
    factors = ROW_FACTORS[:2] if args.quick else ROW_FACTORS
    widths = WIDTHS[:2] if args.quick else WIDTHS
    points = [measure("rows", factor, base * factor, BASE_WIDTH, 2, epochs) for factor in factors]
    points += [measure("width", width, base, width, 2, epochs) for width in widths if width != BASE_WIDTH]
    points += [measure("workers", 1, base, BASE_WIDTH, 1, epochs)]
    points += [_multinode(base, epochs)]
    out = Path(args.out or "runs/bench-scaling")
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps([asdict(point) for point in points], indent=2))
    _table(points, base)
    _plot(points, out / "scaling.png")
    print(f"written: {out / 'scaling.json'}, {out / 'scaling.png'}", flush=True)


def _multinode(rows: int, epochs: int) -> Point:
    """2 workers on a head and two 1-CPU nodes of one ``ray.cluster_utils.Cluster`` (stopped after)."""
    import ray
    from ray.cluster_utils import Cluster

    from rayeffi.bench.sockets import LoopbackWatch
    from rayeffi.stages.ray_session import LOOPBACK_IP, loopback_only

    if ray.is_initialized():
        ray.shutdown()  # the single-node points' private Ray
    with loopback_only():  # every node binds and is reached on 127.0.0.1, as a private Ray is
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": True, "dashboard_host": LOOPBACK_IP, "node_ip_address": LOOPBACK_IP})
        for _ in range(2):
            cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK_IP)
    try:
        cluster.wait_for_nodes()
        with LoopbackWatch() as watch:  # every socket of every Ray process, twice a second
            point = measure("multinode", 3, rows, BASE_WIDTH, 2, epochs, address=cluster.address, nodes=3)
        if watch.findings:
            raise RuntimeError(f"Ray sockets off loopback during the multinode run: {sorted(watch.findings)}")
        print(f"multinode: {watch.samples} samples of every Ray process's sockets, all on 127.0.0.0/8", flush=True)
        return point
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def _table(points: list[Point], base: int) -> None:
    print(f"\nbase: {base} synthetic rows x {NUM_FEATURES} features, MLP {NUM_FEATURES}-w-w-10, global batch {BATCH}")
    print(f"{'axis':<10} {'value':>6} {'rows':>7} {'width':>6} {'workers':>7} {'nodes':>5} "
          f"{'s/epoch':>8} {'samples/s':>10} {'wall s':>7}")
    for p in points:
        print(f"{p.axis:<10} {p.value:>6} {p.rows:>7} {p.width:>6} {p.workers:>7} {p.nodes:>5} "
              f"{p.epoch_s:>8.3f} {p.samples_per_s:>10.0f} {p.wall_s:>7.1f}")
    rows = [p for p in points if p.axis == "rows"]
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(f"rows x{last.value // first.value}: epoch time x{last.epoch_s / first.epoch_s:.2f} "
              f"(linear would be x{last.value // first.value}), wall time x{last.wall_s / first.wall_s:.2f}")
    one = next((p for p in points if p.axis == "workers" and p.workers == 1), None)
    two = next((p for p in points if p.axis == "rows" and p.value == 1), None)
    if one and two:
        print(f"2 workers / 1 worker samples/s: {two.samples_per_s / one.samples_per_s:.2f}x")
    multi = next((p for p in points if p.axis == "multinode"), None)
    if multi and two:
        print(f"3-node cluster / one node (2 workers) epoch time: {multi.epoch_s / two.epoch_s:.2f}x")


def _plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = [p for p in points if p.axis == "rows" and p.value == 1]  # the point every axis varies from
    panels = (("rows", "rows", "training rows", "log"), ("width", "width", "MLP hidden width", "log"),
              ("workers", "workers", "workers on one node", "linear"))
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (axis, key, label, scale) in zip(axes, panels):
        chosen = sorted({id(p): p for p in [p for p in points if p.axis == axis] + base}.values(),
                        key=lambda p: getattr(p, key))
        xs = [getattr(p, key) for p in chosen]
        handles = ax.plot(xs, [p.epoch_s for p in chosen], "o-", label="s / epoch (steady)")
        twin = ax.twinx()
        handles += twin.plot(xs, [p.samples_per_s for p in chosen], "^--", color="C1", label="samples/s")
        if axis == "workers":
            multi = [p for p in points if p.axis == "multinode"]
            handles += ax.plot([p.workers for p in multi], [p.epoch_s for p in multi], "s", color="C3",
                               label="2 workers, 3-node cluster")
            ax.set_xticks(sorted({p.workers for p in chosen}))
        if scale == "log":
            ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("seconds per epoch")
        twin.set_ylabel("samples/s")
        ax.set_ylim(bottom=0)
        twin.set_ylim(bottom=0)
        ax.legend(handles=handles, loc="upper left", fontsize=8)
    figure.suptitle("rayeffi train stage: cost as work grows")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
