"""``rayeffi bench pipeline``: step time, measured bubble and throughput of the pipeline strategy.

Workload: 8 equal ``Linear(1024, 1024) + ReLU`` blocks and a classifier (balanced by
parameters into K stages), global batch 512, SGD, random data: large enough that a
micro-batch's compute outweighs sending its activations. For K in ``--stages``
and M in {1, 2, 4, 8, 16} micro-batches, K gloo processes (one thread each) run
``train_step`` with the pipeline's ``forward_backward`` (the code Ray Train workers run; Ray itself is left out so
the figures are the pipeline's, not Ray's start-up).

Bubble: every stage's compute calls (forward, backward, weight-gradient) are timed
(``parallel/pipeline_timeline.py``); over the schedule's window, from the first
worker's start to the last worker's end, the idle share is
``1 - sum_k busy_k / (K x window)``, against GPipe's ``(K-1)/(M+K-1)``. Communication,
and any imbalance between stages, counts as idle: the formula assumes neither.
Throughput is against the unsplit model trained by ``train_step`` in one process,
with 1 thread and with K threads, measured in the same run. Each figure is the
median of the timed steps.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from rayeffi.bench.ranks import end_rank, free_port, run_ranks
from rayeffi.parallel import DataParallel, Pipeline
from rayeffi.parallel.pipeline_timeline import Timeline, busy_seconds, ideal_bubble, measured_bubble
from rayeffi.recipe.pipeline import PipelineConfig
from rayeffi.report.gantt import plot_pipeline_gantt
from rayeffi.precision import Precision
from rayeffi.worker.build import assemble
from rayeffi.worker.step import StepParts, train_step

WIDTH, BLOCKS, CLASSES, BATCH = 1024, 8, 10, 512
MICROBATCHES = (1, 2, 4, 8, 16)
GANTT_MICROBATCHES = 8


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(BLOCKS):
        layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(WIDTH, CLASSES))


def _batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, WIDTH, generator=generator), torch.randint(0, CLASSES, (BATCH,), generator=generator)


def _parts(strategy) -> StepParts:
    return assemble(_model(), strategy, Precision(), lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9))


def _time_config(rank: int, num_stages: int, schedule: str, microbatches: int, steps: int, warmup: int) -> dict:
    strategy = Pipeline(rank, num_stages, torch.device("cpu"),
                        PipelineConfig(num_stages=num_stages, num_microbatches=microbatches, schedule=schedule))
    strategy.timeline = Timeline()
    parts = _parts(strategy)
    inputs, targets = _batch()
    windows, step_times, events = [], [], []
    for step in range(warmup + steps):
        if step == warmup:  # the schedule exists after the first step: time its calls from here on
            run = strategy.schedule.step

            def timed(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return run(*args, **kwargs)
                finally:
                    windows.append((start, time.perf_counter()))

            strategy.schedule.step = timed
        strategy.timeline.clear()
        dist.barrier()  # sync point: every worker starts the step together
        start = time.perf_counter()
        train_step(parts, inputs, targets)
        if step >= warmup:
            step_times.append(time.perf_counter() - start)
            events.append(list(strategy.timeline.events))
    return {"windows": windows, "step_times": step_times, "events": events}


def _rank(rank: int, num_stages: int, port: int, configs: list, steps: int, warmup: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=num_stages)
    try:
        mine = [_time_config(rank, num_stages, schedule, m, steps, warmup) for schedule, m in configs]
        gathered = [None] * num_stages
        dist.all_gather_object(gathered, mine)
        if rank == 0:
            torch.save(gathered, out_path)
    except BaseException:
        dist.destroy_process_group()  # a failed rank: tear down so the others fail too
        raise
    end_rank()  # not destroy_process_group: it can deadlock on torch 2.13 (bench/ranks.py)


def _summarise(per_worker: list[dict], num_stages: int, microbatches: int) -> dict:
    """Median over steps of the measured bubble; events of the median step for the chart."""
    bubbles, windows = [], []
    for step in range(len(per_worker[0]["windows"])):
        start = min(w["windows"][step][0] for w in per_worker)
        end = max(w["windows"][step][1] for w in per_worker)
        busy = [busy_seconds(w["events"][step], start, end) for w in per_worker]
        bubbles.append(measured_bubble(busy, end - start))
        windows.append((start, end))
    median_step = sorted(range(len(bubbles)), key=bubbles.__getitem__)[len(bubbles) // 2]
    start, end = windows[median_step]
    chart = [[(a, c, m, s - start, e - start) for a, c, m, s, e in w["events"][median_step]] for w in per_worker]
    step_s = statistics.median(statistics.median(w["step_times"]) for w in per_worker)
    return {"num_stages": num_stages, "num_microbatches": microbatches, "step_ms": 1e3 * step_s,
            "samples_per_s": BATCH / step_s, "bubble": statistics.median(bubbles),
            "ideal_bubble": ideal_bubble(num_stages, microbatches), "chart": chart, "chart_s": end - start}


def _unsplit_samples_per_s(threads: int, steps: int, warmup: int) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        parts = assemble(_model(), DataParallel(), Precision(),
                         lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9))
        inputs, targets = _batch()
        times = []
        for step in range(warmup + steps):
            start = time.perf_counter()
            train_step(parts, inputs, targets)
            if step >= warmup:
                times.append(time.perf_counter() - start)
        return BATCH / statistics.median(times)
    finally:
        torch.set_num_threads(previous)


def measure(stage_counts=(2, 4), schedules=("gpipe", "1f1b"), steps: int = 8, warmup: int = 2,
            out_dir: str | Path = "runs/bench-pipeline", timeout_s: float = 900.0) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, charts = [], []
    for num_stages in stage_counts:
        configs = [(s, m) for s in schedules for m in MICROBATCHES if s == "gpipe" or m >= num_stages]
        raw = out_dir / f"raw-k{num_stages}.pt"
        print(f"  pipeline bench: K={num_stages}, {len(configs)} schedule x micro-batch configurations", flush=True)
        run_ranks(_rank, (num_stages, free_port(), configs, steps, warmup, str(raw)), num_stages, timeout_s,
                  f"pipeline bench with K={num_stages}", start_method="fork")
        gathered = torch.load(raw, weights_only=True)
        for index, (schedule, m) in enumerate(configs):
            row = _summarise([worker[index] for worker in gathered], num_stages, m)
            row["schedule"] = schedule
            chart, chart_s = row.pop("chart"), row.pop("chart_s")
            if m == GANTT_MICROBATCHES:
                path = out_dir / f"gantt-{schedule}-k{num_stages}-m{m}.png"
                title = (f"{schedule}, K={num_stages} stages, M={m} micro-batches: measured bubble "
                         f"{row['bubble']:.1%}, ideal (K-1)/(M+K-1) = {row['ideal_bubble']:.1%}")
                charts.append(str(plot_pipeline_gantt(chart, chart_s, title, path)))
            rows.append(row)
    baselines = {threads: _unsplit_samples_per_s(threads, steps, warmup) for threads in sorted({1, *stage_counts})}
    for row in rows:
        row["vs_unsplit_1_thread"] = row["samples_per_s"] / baselines[1]
        row["vs_unsplit_k_threads"] = row["samples_per_s"] / baselines[row["num_stages"]]
    result = {"rows": rows, "unsplit_samples_per_s": baselines, "charts": charts,
              "workload": f"{BLOCKS} x Linear({WIDTH},{WIDTH})+ReLU + Linear({WIDTH},{CLASSES}), batch {BATCH}"}
    (out_dir / "pipeline.json").write_text(json.dumps(result, indent=2))
    return result


def run(args) -> None:
    stage_counts = tuple(args.stages or (2, 4))
    result = measure(stage_counts, steps=3 if args.quick else 8, warmup=1 if args.quick else 2,
                     out_dir=args.out or "runs/bench-pipeline")
    print(f"workload: {result['workload']}; one gloo process per stage, 1 thread each")
    print("unsplit model, one process: " + ", ".join(
        f"{threads} thread(s) {v:.0f} samples/s" for threads, v in result["unsplit_samples_per_s"].items()))
    print(f"{'K':>2} {'schedule':>8} {'M':>3} {'step ms':>8} {'samples/s':>9} {'bubble':>7} {'(K-1)/(M+K-1)':>13} "
          f"{'diff pts':>8} {'vs 1 thr':>8} {'vs K thr':>8}")
    for r in result["rows"]:
        print(f"{r['num_stages']:>2} {r['schedule']:>8} {r['num_microbatches']:>3} {r['step_ms']:>8.1f} "
              f"{r['samples_per_s']:>9.0f} {r['bubble']:>7.1%} {r['ideal_bubble']:>13.1%} "
              f"{100 * (r['bubble'] - r['ideal_bubble']):>+8.1f} {r['vs_unsplit_1_thread']:>7.2f}x "
              f"{r['vs_unsplit_k_threads']:>7.2f}x")
    for chart in result["charts"]:
        print(f"gantt chart: {chart}")
