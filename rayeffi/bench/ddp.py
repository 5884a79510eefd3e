"""``rayeffi bench ddp``: the train stage against native PyTorch DDP, plus quickstart wall time.

Both sides train the same MLP on the same synthetic rows with the same global batch
and worker count; each side's steady-state step time is the median epoch time after
the first epoch divided by steps per epoch. Printed: both times and their ratio, for two
workloads: ``small`` (MLP 256-1024-512-10, a step of ~10 ms on a CPU core, where any
per-step overhead shows) and ``wide`` (MLP 256-2048-2048-10, a step of >= 50 ms, the
regime real models train in), and ``small`` again with ``data.in_memory_mb: 0``: the
streaming path a shard larger than the memory budget takes (Ray Data's iterator every
epoch). ``--quick`` runs ``small`` only, without the quickstart timing. ``--cpu-share``
adds which processes used the CPUs during each arm (``bench/cpu_share.py``).
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rayeffi.bench import cpu_share, steady_epoch_s
from rayeffi.bench.native_ddp import native_ddp_epoch_seconds
from rayeffi.recipe import validate_recipe
from rayeffi.driver.run import run_recipe

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"


WORKLOADS = {"small": ((1024, 512), None), "wide": ((2048, 2048), None), "small-streaming": ((1024, 512), 0)}
"""name: (MLP hidden widths, data.in_memory_mb: None for the default budget, 0 to stream)."""


def bench_recipe(num_workers: int, quick: bool, hidden: tuple[int, ...] = WORKLOADS["small"][0],
                 in_memory_mb: float | None = None):
    data = {"in_memory_mb": in_memory_mb} if in_memory_mb is not None else {}
    return validate_recipe({
        "name": "bench-ddp",
        "seed": 0,
        "data": {"dataset": "synthetic", "batch_size": 256, "shuffle": True, **data,
                 "synthetic": {"num_samples": 4096 if quick else 16384, "num_features": 256,
                               "num_classes": 10, "num_shards": 4}},
        "model": {"name": "mlp", "hidden_sizes": list(hidden)},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "scaling": {"num_workers": num_workers, "resources_per_worker": {"CPU": 1}},
        "stages": [{"name": "train", "kind": "train", "epochs": 3 if quick else 5}],
    })


def steady_step_ms(epoch_seconds: list[float], steps_per_epoch: int) -> float:
    return 1000 * steady_epoch_s(epoch_seconds) / steps_per_epoch


def run(args) -> None:
    step_ms = {}
    for name in (["small"] if args.quick else list(WORKLOADS)):
        print(f"-- workload {name}", flush=True)
        step_ms[name] = _run_workload(args, *WORKLOADS[name])
    if "small-streaming" in step_ms:  # the streamed shard against the same workload held in memory, this run
        print(f"streaming/in-memory : {step_ms['small-streaming'] / step_ms['small']:8.2f}x "
              f"({step_ms['small-streaming']:.2f} against {step_ms['small']:.2f} ms/step; goal <= 1.10)")
    if not args.quick:
        _quickstart_wall_time()


def _run_workload(args, hidden: tuple[int, ...], in_memory_mb: float | None) -> float:
    """Print the workload's rayeffi and native step times; return rayeffi's (ms)."""
    recipe = bench_recipe(args.workers, args.quick, hidden, in_memory_mb)
    stage = recipe.stages[0]
    sample = getattr(args, "cpu_share", False) and cpu_share.available()
    with tempfile.TemporaryDirectory(prefix="rayeffi-bench-") as out:
        epoch_ends: list[float] = []  # when the driver printed each epoch line (the sampler's clock)
        with _sampler(sample) as rayeffi_cpu:
            summary = run_recipe(recipe, out, echo=lambda line: " epoch " in line and epoch_ends.append(time.monotonic()))
    rayeffi_epochs = [row["epoch_s"] for row in summary["stages"][0]["history"]]
    num_train = stage.data.synthetic.num_samples
    steps = math.ceil(num_train / stage.data.batch_size)
    rayeffi_ms = steady_step_ms(rayeffi_epochs, steps)

    from rayeffi.data.info import DatasetInfo

    info = DatasetInfo(stage.data.synthetic.num_features, stage.data.synthetic.num_classes, None, num_train, 0)
    with _sampler(sample) as native_cpu:
        native_epochs = native_ddp_epoch_seconds(stage, info, max(args.workers, 1))
    native_ms = steady_step_ms(native_epochs, steps)

    widths = "-".join(str(width) for width in (256, *hidden, 10))
    print(f"workload: MLP {widths}, {num_train} synthetic rows, global batch {stage.data.batch_size}, "
          f"{args.workers} workers, {stage.total_epochs} epochs ({steps} steps each)")
    path = "streamed through Ray Data each epoch" if in_memory_mb == 0 else "shard read once, kept in memory"
    print(f"rayeffi train stage : {rayeffi_ms:8.2f} ms/step (steady state, {path}, DDP on gloo)")
    print(f"  epochs (s)        : {' '.join(f'{seconds:.3f}' for seconds in rayeffi_epochs)} rayeffi, "
          f"{' '.join(f'{seconds:.3f}' for seconds in native_epochs)} native")
    print(f"native PyTorch DDP  : {native_ms:8.2f} ms/step (torch.multiprocessing, in-memory tensors)")
    print(f"ratio rayeffi/native: {rayeffi_ms / native_ms:8.2f}x")
    print(f"rayeffi end to end  : {summary['wall_s']:8.1f} s for the stage run (Ray start excluded)", flush=True)
    if getattr(args, "cpu_share", False) and not sample:
        print("cpu share: needs Linux's /proc; not measured")
    elif sample:  # the steady epochs: rayeffi's up to its last epoch line, native's up to the ranks' exit
        last_epoch_end = epoch_ends[-1] + cpu_share.SAMPLE_S if epoch_ends else None  # the sample after it
        cpu_share.print_share("rayeffi train stage", rayeffi_cpu, sum(rayeffi_epochs[1:]), last_epoch_end)
        cpu_share.print_share("native PyTorch DDP", native_cpu, sum(native_epochs[1:]))
    return rayeffi_ms


def _sampler(sample: bool):
    return cpu_share.CpuSampler() if sample else contextlib.nullcontext()


def _quickstart_wall_time() -> None:
    if QUICKSTART.is_file():
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="rayeffi-quickstart-") as out:
            done = subprocess.run([sys.executable, "-m", "rayeffi", "run", str(QUICKSTART), "--out", out],
                                  capture_output=True, text=True)
        wall = time.perf_counter() - start
        accuracy = [line for line in done.stdout.splitlines() if "done in" in line]
        print(f"quickstart wall time: {wall:8.1f} s end to end (exit {done.returncode}; {accuracy[-1] if accuracy else ''})")
