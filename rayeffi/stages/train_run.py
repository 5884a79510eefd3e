"""One Ray Train V2 ``TorchTrainer`` run of the worker loop: the leaf every stage path uses.

The dispatcher (``stages/dispatch.py``) calls :func:`run_train` for a plain run; Tune trials
(``stages/tune.py``) build their trainers with :func:`build_trainer`; the parameter server
(``stages/param_server.py``) takes :func:`init_checkpoint`. Nothing here imports another
stage module but ``stages/base.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import ray

from ray.train import CheckpointConfig, ControllerError, FailureConfig, RunConfig, ScalingConfig
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
from ray.train.torch import TorchTrainer

from rayeffi.data.ray_datasets import build_ray_datasets
from rayeffi.errors import UserError
from rayeffi.health import TrainingDiverged
from rayeffi.recipe.models import StageConfig
from rayeffi.stages.base import StageContext, StageResult, init_checkpoint, publish_checkpoint, worker_spec  # noqa: F401
from rayeffi.stages.process_group import LoopbackTorchConfig
from rayeffi.worker.loop import WorkerSpec, train_loop_per_worker


START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def build_trainer(
    stage: StageConfig, context: StageContext, spec: WorkerSpec, callbacks=(), run_name: str | None = None
) -> TorchTrainer:
    """The ``TorchTrainer`` of one stage; Tune trials build theirs here too."""
    scaling = stage.scaling
    local_mode = scaling.num_workers == 0
    datasets = build_ray_datasets(context.source, stage.data, stage.seed)
    split, world_size = stage.data_layout.split_across_workers, max(scaling.num_workers, 1)  # local mode: 1
    # every rank's shard from the driver: Ray Train starts no dataset manager, no split coordinators
    spec = replace(spec, shards=driver_shards(datasets, world_size, split))
    os.environ[START_TIMEOUT_ENV] = f"{scaling.start_timeout_s:g}"  # Ray Train hands it on to its controller
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            resources_per_worker=None if local_mode else dict(scaling.resources_per_worker),
            use_gpu=scaling.use_gpu,
        ),
        # NCCL on GPUs unless overridden; the rendezvous store on loopback in a local run
        torch_config=LoopbackTorchConfig(backend=scaling.process_group_backend),
        run_config=RunConfig(
            # a unique name: re-using one makes Ray resume that run's checkpoints
            name=run_name or f"{stage.name}-{uuid.uuid4().hex[:8]}",
            storage_path=str(context.storage_path),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # a worker group the cluster cannot place (a node left) is a controller failure to Ray
            # Train, retried without limit by default: a hang. It gets max_failures retries too.
            failure_config=FailureConfig(max_failures=scaling.max_failures,
                                         controller_failure_limit=scaling.max_failures),
            callbacks=list(callbacks),
        ),
    )


def driver_shards(datasets: dict, world_size: int, split: bool) -> dict[str, list]:
    """Each rank's shard of each (materialized) dataset, put in the object store by the driver.

    ``equal=True`` as Ray Train splits: every rank takes as many steps. A worker reads its
    shard once and keeps it as tensors when it fits ``data.in_memory_mb``, or streams it
    from the object store each epoch (``worker/batches.py``). Ray Train's own
    ``streaming_split`` would add a dataset-manager actor and one coordinator actor per
    dataset (each a process importing Ray Data: ~5 CPU-seconds of every run's start-up on a
    2-core machine), 40-140 ms at the start of every epoch while the ranks wait for each
    other, and 6% of a core while it ran (``rayeffi bench ddp --cpu-share``). The driver
    holds the references for the whole run, so a restarted worker group reads the same
    shards (as the parameter server's workers do).
    """
    shards = {}
    for name, dataset in datasets.items():
        if split and world_size > 1:
            shards[name] = [ray.put(part) for part in dataset.split(world_size, equal=True)]
        else:
            shards[name] = [ray.put(dataset)] * world_size
    return shards


def run_train(stage: StageConfig, context: StageContext) -> StageResult:
    """The stage as one Ray Train run; its last checkpoint becomes the artifact."""
    local_mode = stage.scaling.num_workers == 0
    spec = worker_spec(stage, context, local_mode=local_mode)
    start = time.perf_counter()
    trainer = build_trainer(stage, context, spec)
    # Ray Train's fit() replaces the driver's SIGINT handler with its own, which aborts the run
    # and then exits the process (status 1, no message) when the controller is already gone, as
    # it is after a terminal's Ctrl-C reaches the whole process group: keep rayeffi's instead
    trainer._register_sigint_handler = _abort_then_interrupt
    previous = signal.getsignal(signal.SIGINT)
    try:
        with worker_user_errors(), unplaced_workers(stage):  # one error line, not a Ray traceback
            result = trainer.fit()
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
    wall_s = time.perf_counter() - start
    with result.checkpoint.as_directory() as checkpoint_dir:
        artifact = publish_checkpoint(Path(checkpoint_dir), context.stage_dir)
    if local_mode:  # local mode reports the worker's own temporary directory
        shutil.rmtree(result.checkpoint.path, ignore_errors=True)
    history, extra = [], {"num_workers": stage.scaling.num_workers}
    if context.progress is not None:
        context.progress.drain()
        history = context.progress.stage_history(stage.name)
        if stage.eval_every_steps is not None:  # validations within epochs, apart from the epoch history
            extra["evals"] = context.progress.stage_evals(stage.name)
    return StageResult(stage.name, stage.kind, artifact, history, wall_s, extra)


def _abort_then_interrupt(controller) -> None:
    """In place of Ray Train's SIGINT handler (main thread only): abort the run's controller
    (gracefully stops the workers, if it is still there), then hand the signal to the handler
    that was installed before (``cli.py``: KeyboardInterrupt, exit 130, a resumable run)."""
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the abort short
        try:
            ray.get(controller.abort.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - the controller may be gone already: the Ctrl-C reached it too
            pass
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


@contextlib.contextmanager
def worker_user_errors():
    """A ``UserError`` a worker raised (e.g. ``TrainingDiverged``), wrapped by Ray Train or by a
    Ray actor call, reaches the driver as that error's first line alone (exit 2, no traceback)."""
    try:
        yield
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        kind = TrainingDiverged if isinstance(user_error, TrainingDiverged) else UserError  # the summary's status
        raise kind(str(user_error).strip().splitlines()[0]) from None


@contextlib.contextmanager
def unplaced_workers(stage: StageConfig):
    """Ray Train gave up placing the worker group (``scaling.start_timeout_s`` per try, every
    retry spent): one error line saying what the cluster has left and what to change."""
    try:
        yield
    except ControllerError as exc:
        if not isinstance(exc.controller_failure, WorkerGroupStartupTimeoutError):
            raise
        raise UserError(unplaced_message(stage, ray.available_resources() if ray.is_initialized() else {})) from None


def unplaced_message(stage: StageConfig, available: dict[str, float]) -> str:
    scaling = stage.scaling
    wanted = dict(scaling.resources_per_worker)
    free = ", ".join(f"{name}: {available.get(name, 0):g}" for name in wanted)
    tries = f"{scaling.max_failures + 1} tries"  # max_failures -1: Ray Train tries without end
    return (f"stage {stage.name}: the cluster could not place {scaling.num_workers} workers of "
            f"{json.dumps(wanted)} within scaling.start_timeout_s ({scaling.start_timeout_s:g} s), {tries} "
            f"(a node may have left; free now: {free}); add nodes, or lower scaling.num_workers or "
            "scaling.resources_per_worker, or raise scaling.start_timeout_s to wait longer")


def find_user_error(exc: BaseException, depth: int = 0) -> UserError | None:
    """A ``UserError`` a worker raised, inside Ray Train's ``WorkerGroupError`` (or its causes)."""
    if isinstance(exc, UserError):
        cause = getattr(exc, "cause", None)  # a RayTaskError posing as the worker's own exception
        return cause if isinstance(cause, UserError) else exc
    if depth > 8:
        return None
    nested = [*getattr(exc, "worker_failures", {}).values(), getattr(exc, "cause", None), exc.__cause__,
              exc.__context__]
    for inner in nested:
        if inner is not None and (found := find_user_error(inner, depth + 1)) is not None:
            return found
    return None
