"""A train / distill / dsd stage with ``parallel.strategy: param_server``: Ray actors, not Ray Train.

The driver starts ``num_servers`` :class:`ServerShard` actors and ``num_workers``
:class:`GradientWorker` actors (fractional CPUs, so they do not starve each other or
Ray Data), hands each worker its Ray Data shard, and runs the epochs:

    start_epoch on every worker     fresh weights; techniques' epoch start (DSD masks)
    publish_settings (worker 0)     the epoch's lr and masks to every shard
    run_epoch on every worker       the Ray Train loop's epoch (worker/epoch.py); pulls and
                                    pushes go straight to the shards
    checkpoint every shard          the restart point of a shard that dies
    evaluate on every worker        validation shards, latest weights
    finish_metrics (worker 0)       the epoch's metrics from the summed figures, as in DDP
    write_checkpoint (worker 0)     the stage checkpoint, data-parallel format

A worker that dies mid-epoch is restarted by Ray (``max_restarts``); the driver
tells the shards to forget its in-flight gradient and runs the rest of its epoch
(the batches it has not pushed). A shard that dies is restarted by Ray from its last
checkpoint and in-flight calls are retried. Both count against
``scaling.max_failures``. A worker whose loss becomes non-finite raises ``TrainingDiverged``:
the stage stops with its one error line (exit 2), as under Ray Train, and every actor is
killed. The driver never touches a tensor: only counts, floats and actor handles pass
through it.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from rayeffi.checkpoint import ARTIFACT_FILE
from rayeffi.data.ray_datasets import build_ray_datasets
from rayeffi.errors import UserError
from rayeffi.param_server.calls import WATCH_EVERY_S, Placement, get_all
from rayeffi.param_server.server import ServerShard, ServerSpec
from rayeffi.param_server.worker import GradientWorker, GradientWorkerSpec
from rayeffi.recipe.models import StageConfig
from rayeffi.stages.base import Artifact, StageContext, StageResult
from rayeffi.stages.train_run import init_checkpoint, worker_user_errors

ACTOR_PREFIX = "rayeffi-ps"


def _max_restarts(stage: StageConfig) -> int:
    return -1 if stage.scaling.max_failures < 0 else stage.scaling.max_failures


def start_actors(stage: StageConfig, context: StageContext, run_id: str, init_checkpoint: str | None):
    """The server shards, the gradient workers (each with its Ray Data shards) and the data they hold."""
    config, scaling = stage.parallel, stage.scaling
    shard_dir = Path(context.storage_path) / f"{stage.name}-{run_id}"
    servers = [
        ray.remote(ServerShard).options(
            name=f"{ACTOR_PREFIX}-{run_id}-server-{k}", num_cpus=config.server_cpus,
            max_restarts=_max_restarts(stage), max_task_retries=-1,
        ).remote(ServerSpec(stage, context.source.info, k, str(shard_dir / f"shard-{k}.pt"), init_checkpoint))
        for k in range(config.num_servers)
    ]
    datasets = build_ray_datasets(context.source, stage.data, stage.seed)
    train_shards = datasets["train"].split(scaling.num_workers, equal=True)
    val_shards = datasets["val"].split(scaling.num_workers)
    options = {"num_cpus": scaling.resources_per_worker.get("CPU", 1.0),
               "num_gpus": scaling.gpus_per_worker,  # gradient workers compute; servers stay on CPUs
               "resources": {k: v for k, v in scaling.resources_per_worker.items() if k not in ("CPU", "GPU")}}
    # Each worker's shards go to the object store here, and the driver holds the references
    # for the whole stage: Ray re-runs a restarted worker's constructor with the same
    # arguments, and a shard passed by value (its serialized form, large once the dataset
    # has many blocks) was seen freed by then ("already deleted by the reference counting
    # protocol"), so the restart failed. The driver also owns the shards' blocks.
    shard_refs = [(ray.put(train_shards[i]), ray.put(val_shards[i])) for i in range(scaling.num_workers)]
    workers = [
        ray.remote(GradientWorker).options(
            name=f"{ACTOR_PREFIX}-{run_id}-worker-{i}", max_restarts=_max_restarts(stage), **options,
        ).remote(GradientWorkerSpec(stage, context.source.info, i, init_checkpoint), servers, *shard_refs[i])
        for i in range(scaling.num_workers)
    ]
    return servers, workers, (datasets, train_shards, val_shards, shard_refs)


class _Failures:
    """Actor deaths seen so far against ``scaling.max_failures``."""

    def __init__(self, stage: StageConfig):
        self.limit, self.count, self.stage = stage.scaling.max_failures, 0, stage.name

    def record(self, what: str, error: Exception) -> None:
        self.count += 1
        if 0 <= self.limit < self.count:
            raise RuntimeError(f"stage {self.stage}: {what} died ({type(error).__name__}) after "
                               f"{self.count - 1} restarts; raise scaling.max_failures to allow more") from error


def run_epoch(epoch: int, servers: list, workers: list, failures: _Failures, config,
              watch: Placement) -> list[list[float]]:
    """One epoch over every worker's shard; a worker that dies runs the rest of its epoch again."""
    start = get_all([servers[0].progress.remote], watch=watch)[0]
    get_all([lambda w=worker: w.start_epoch.remote(epoch) for worker in workers], watch=watch)
    get_all([workers[0].publish_settings.remote], watch=watch)
    pending = {workers[i].run_epoch.remote(epoch, start["version"]): i for i in range(len(workers))}
    results: dict[int, list[list[float]]] = {i: [] for i in range(len(workers))}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=WATCH_EVERY_S)
        if not ready:
            watch.check()  # a worker waits on a shard (or is itself) that no node can take
            continue
        index = pending.pop(ready[0])
        ready = ready[0]
        try:
            results[index].append(ray.get(ready))
        except RayActorError as error:
            failures.record(f"gradient worker {index}", error)
            get_all([lambda s=server: s.forget.remote(index) for server in servers],
                    watch=watch)  # its in-flight gradient never comes
            _wait_until_restarted(workers[index], watch)
            skip = _batches_done(servers, index, start, config, watch)
            pending[workers[index].run_epoch.remote(epoch, start["version"], skip)] = index  # Ray restarted it
    return [part for index in sorted(results) for part in results[index]]


def _wait_until_restarted(actor, watch: Placement) -> None:
    """Ray restarts a dead actor in the background; calls before it is up fail as unavailable."""
    while True:
        try:
            ray.get(actor.current_lr.remote(), timeout=WATCH_EVERY_S)
            return
        except (ActorUnavailableError, GetTimeoutError):
            watch.check()
            time.sleep(0.2)


def _batches_done(servers: list, index: int, start: dict[str, Any], config, watch: Placement) -> int:
    """Batches of this epoch the shards have from worker ``index`` (sync: rounds complete on all)."""
    now = get_all([server.progress.remote for server in servers], watch=watch)
    if config.mode == "sync":
        return min(p["version"] for p in now) - start["version"]
    pushes = min(p["pushes"].get(index, 0) for p in now) - start["pushes"].get(index, 0)
    return pushes * config.push_every


def epoch_sums(parts: list[list[float]], val: list[list[float]]) -> tuple[list[float], float]:
    """Every worker's figures summed in ``finish_metrics``' order (``run_epoch``'s ``[loss_sum,
    rows, scored, seconds]`` parts, then ``evaluate``'s sums), and the slowest part's seconds."""
    train = [sum(column) for column in zip(*(part[:3] for part in parts))]
    return train + [sum(column) for column in zip(*val)], max(max(part[3] for part in parts), 1e-9)


def server_metrics(stats: list[dict], versions_before: float, seconds: float) -> dict[str, Any]:
    """The parameter server's own metric keys, beside the data-parallel ones."""
    staleness: Counter[int] = Counter()
    for shard in stats:
        staleness.update({int(k): v for k, v in shard["staleness"].items()})
    updates = sum(s["version"] for s in stats) / len(stats) - versions_before
    applied = sum(staleness.values())
    return {
        "server_updates": updates,
        "updates_per_s": updates / seconds,
        "staleness_histogram": {str(k): staleness[k] for k in sorted(staleness)},
        "staleness_max": max(staleness, default=0),
        "staleness_mean": sum(k * v for k, v in staleness.items()) / max(applied, 1),
        "server_restores": sum(s["restored"] for s in stats),
    }


def _run_epochs(stage: StageConfig, context: StageContext, servers: list, workers: list, failures: _Failures,
                artifact_path: str, watch: Placement) -> tuple[dict[str, Any], Counter[int]]:
    """Every epoch; the last epoch's metrics and the stage's staleness histogram."""
    total: Counter[int] = Counter()
    metrics: dict[str, Any] = {}
    versions = 0.0
    for epoch in range(stage.total_epochs):
        parts = run_epoch(epoch, servers, workers, failures, stage.parallel, watch)
        lr = get_all([workers[0].current_lr.remote], watch=watch)[0]
        get_all([server.checkpoint.remote for server in servers], watch=watch)
        val = get_all([worker.evaluate.remote for worker in workers], watch=watch)
        stats = get_all([server.epoch_stats.remote for server in servers], watch=watch)
        sums, train_s = epoch_sums(parts, val)
        metrics = get_all([lambda: workers[0].finish_metrics.remote(sums, train_s, epoch, lr)], watch=watch)[0]
        metrics.update(server_metrics(stats, versions, train_s))
        versions = sum(s["version"] for s in stats) / len(stats)
        total.update({int(k): v for k, v in metrics["staleness_histogram"].items()})
        get_all([lambda: workers[0].write_checkpoint.remote(artifact_path, epoch + 1, metrics, workers[1:])],
                watch=watch)
        if context.progress_queue is not None:
            context.progress_queue.put({"stage": stage.name, **metrics})
    return metrics, total


def run_param_server_stage(stage: StageConfig, context: StageContext) -> StageResult:
    if context.resume_checkpoint:
        raise UserError(f"stages.{stage.name}: resuming a param_server stage from a checkpoint is not supported; "
                        "use init_from to start from its weights")
    run_id = uuid.uuid4().hex[:8]
    start_time = time.perf_counter()
    servers, workers, _data = start_actors(stage, context, run_id, init_checkpoint(stage, context))
    failures = _Failures(stage)
    artifact_path = str(Path(context.stage_dir) / ARTIFACT_FILE)
    try:
        with worker_user_errors():  # a worker's TrainingDiverged: its one error line, exit 2
            watch = Placement(stage, {**{f"server shard {k}": s for k, s in enumerate(servers)},
                                      **{f"gradient worker {i}": w for i, w in enumerate(workers)}})
            metrics, total = _run_epochs(stage, context, servers, workers, failures, artifact_path, watch)
            restarted = sum(get_all([worker.was_restarted.remote for worker in workers], watch=watch))
    finally:
        for actor in [*workers, *servers]:
            ray.kill(actor, no_restart=True)
    wall_s = time.perf_counter() - start_time
    history = []
    if context.progress is not None:
        context.progress.drain()
        history = context.progress.stage_history(stage.name)
    extra = {
        "num_workers": stage.scaling.num_workers,
        "param_server": {
            "mode": stage.parallel.mode,
            "num_servers": stage.parallel.num_servers,
            "max_staleness": stage.parallel.max_staleness,
            "staleness_histogram": {str(k): total[k] for k in sorted(total)},
            "worker_restarts": restarted,  # workers Ray started again (mid-epoch or between calls)
            "epochs_rerun": failures.count,  # run_epoch calls that died and were run again
        },
    }
    if context.progress is not None:
        histogram = ", ".join(f"{k}: {v}" for k, v in extra["param_server"]["staleness_histogram"].items())
        context.progress.echo(f"[{stage.name}] staleness of applied gradients (versions: count): {histogram}")
    return StageResult(stage.name, stage.kind, Artifact(artifact_path, metrics), history, wall_s, extra)
