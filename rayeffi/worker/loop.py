"""The per-worker loop: build the step's parts, then run epochs over the stage's data
(each epoch: ``worker/epoch.py``, the one epoch loop, shared with the parameter server).

It runs inside every Ray Train worker, in a Tune trial in local mode, or in the driver's
own process without Ray (``stages/local_run.py``: ``WorkerSpec.in_process``, where it never
imports Ray), and never imports Ray Tune. Everything it needs arrives in one :class:`WorkerSpec`.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rayeffi.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_atomic
from rayeffi.data.augment import Augment, RowAugment
from rayeffi.data.info import DatasetInfo
from rayeffi.device import choose_device
from rayeffi.parallel import build_strategy
from rayeffi.recipe.models import StageConfig
from rayeffi.worker.batches import ShardBatches
from rayeffi.worker.build import build_worker
from rayeffi.worker.early_stop import EarlyStopping
from rayeffi.worker.epoch import NO_HOOKS, EpochHooks, evaluate, finish_metrics, stage_batches, train_epoch, \
    validation_metrics
from rayeffi.worker.optim import steps_per_epoch
from rayeffi.worker.state import collect_state, fresh_start, restore_state
from rayeffi.worker.step import StepParts
from rayeffi.worker.within_epoch import WithinEpoch

@dataclass(frozen=True)
class WorkerSpec:
    """What the driver hands every worker of one stage."""

    stage: StageConfig
    info: DatasetInfo
    init_checkpoint: str | None = None
    """Model weights to start from (``init_from``); optimizer starts fresh."""
    resume_checkpoint: str | None = None
    """A full checkpoint to continue from (model, optimizer, scheduler, epoch, RNG)."""
    progress: Any = None
    """A ``ray.util.queue.Queue`` the driver prints epoch lines from (in process: a ``queue.Queue``), or None."""
    local_mode: bool = False
    label: str | None = None
    """Name of this run in progress lines and history (a Tune trial's is ``stage/trial``)."""
    report_to: Any = None
    """Where a local-mode run reports each epoch instead of Ray Train: a Tune trial's
    ``report(metrics, checkpoint_dir)`` (``stages/tune.py``), which persists the checkpoint."""
    shards: dict[str, list] | None = None
    """Per dataset (``train``, ``val``), one object reference per rank to that rank's
    materialized shard (``stages/train_run.py: driver_shards``), kept in memory or streamed
    as ``data.in_memory_mb`` says (``worker/batches.py``); in process, the datasets themselves
    (``data/arrow_datasets.py``)."""
    in_process: bool = False
    """The driver's own process without Ray (``stages/local_run.py``): shards are the datasets
    themselves, ``report_to`` keeps the checkpoints, the device is this process's."""

    @property
    def outside_ray_train(self) -> bool:
        """A Tune trial in local mode, or the in-process run: no ``ray.train`` session (its calls
        refuse to run inside Tune), so rank, world size, checkpoint and shards come from the
        spec, reports go to ``report_to``."""
        return self.report_to is not None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec: WorkerSpec = config["spec"]
    stage = spec.stage
    rank, world_size = _rank_and_world_size(spec)

    choice = choose_device(stage.scaling.use_gpu, None if spec.in_process else _ray_train_device())  # CPU w/o CUDA
    if not spec.local_mode:  # as many torch threads as the worker's CPUs: more would fight its neighbours
        torch.set_num_threads(max(1, int(stage.scaling.resources_per_worker.get("CPU", 1))))
    strategy = build_strategy(stage.parallel, rank, world_size, choice.device, spec.info)
    parts, scheduler = build_worker(stage, spec.info, strategy, spec.init_checkpoint)
    start_epoch, start_step, last_metrics, history = _restore(parts, scheduler, spec, rank)
    stopper = EarlyStopping.from_config(stage.early_stop, stage.task.name) if stage.early_stop else None
    if stopper is not None:
        stopper.restore(last_metrics)
    devices = strategy.all_gather_object(choice.summary(_gpu_ids(spec)))  # once per start: a collective
    if rank == 0 and spec.progress is not None:  # the driver counts (re)starts of the worker group
        spec.progress.put({"stage": spec.label or stage.name, "event": "start", "from_epoch": start_epoch,
                           "from_step": start_step, "devices": devices})
    augment = row_augment(stage, spec.info, rank)
    train = _shard_batches("train", spec, rank, world_size)
    val = _shard_batches("val", spec, rank, world_size)
    reporter = _Reporter(spec)
    steps = steps_per_epoch(spec.info.num_train, stage.data_layout, stage.scaling.num_workers)
    try:
        for epoch in range(start_epoch, stage.total_epochs):
            done = start_step if epoch == start_epoch else 0  # a checkpoint within the epoch: continue after it
            hooks = _within_epoch(parts, scheduler, spec, reporter, val, augment, rank, epoch, steps, done,
                                  last_metrics, history)
            for technique in parts.techniques:
                technique.on_epoch_start(epoch, parts.model, parts.optimizer)
            lr = parts.optimizer.param_groups[0]["lr"]
            report = _progress_reporter(spec, rank, epoch)
            if epoch == start_epoch and stage.compile is not None:
                report = _first_step_time(report, spec, rank)
            train_sums, train_s = train_epoch(parts, train, stage, epoch, hooks=hooks, augment=augment,
                                              report=report,
                                              log_step=_step_logger(parts, spec, rank, epoch, steps))
            if epoch + 1 < stage.total_epochs:
                train.read_ahead()  # a streamed shard's next epoch starts while this one validates
            val_sums = evaluate(parts, val, augment)
            if parts.scheduler is None:  # a per-step schedule steps in finish_step
                scheduler.step()
            totals = strategy.all_reduce_sum(torch.cat([train_sums, val_sums]))  # sync point (on the device)
            metrics = finish_metrics(parts, totals.tolist(), train_s=train_s, epoch=epoch, lr=lr,  # one host sync
                                     num_classes=spec.info.num_classes)
            stop = stopper is not None and stopper.update(metrics)  # all-reduced metrics: every rank agrees
            if stop:
                metrics["stopped_early"] = True
            if parts.strategy.is_rank_zero:  # every epoch's metrics ride in its checkpoint (driver/resume.py),
                history.append(metrics)  # which rank 0 writes: the other ranks would only hold a growing copy
            state = collect_state(parts, scheduler, epoch + 1, metrics, global_step=(epoch + 1) * steps,
                                  history=history)
            reporter.report(metrics, state, epoch_line=True)
            last_metrics = metrics
            if stop:
                break
    finally:
        for technique in reversed(parts.techniques):
            technique.teardown()
        strategy.teardown()


def _rank_and_world_size(spec: WorkerSpec) -> tuple[int, int]:
    if spec.outside_ray_train:
        return 0, 1
    import ray.train

    context = ray.train.get_context()
    return context.get_world_rank(), context.get_world_size()


def _ray_train_device() -> torch.device:
    import ray.train.torch

    return ray.train.torch.get_device()


def _gpu_ids(spec: WorkerSpec) -> list:
    """The GPU ids Ray assigned to this worker (in process: none, the device is this process's own)."""
    if spec.in_process:
        return []
    import ray

    return ray.get_gpu_ids()


def _shard_batches(name: str, spec: WorkerSpec, rank: int, world_size: int) -> ShardBatches:
    if spec.in_process:
        shard = spec.shards[name][rank]
    else:
        import ray

        shard = ray.get(spec.shards[name][rank])  # the driver's split (stages/train_run.py: driver_shards)
    return stage_batches(shard, name, spec.stage, spec.info, world_size)


PROGRESS_INTERVAL_S = 1.0
"""Rank 0 sends its progress within an epoch at most this often (``stages/live.py`` shows it)."""


def _progress_reporter(spec: WorkerSpec, rank: int, epoch: int):
    """Rank 0's live progress within the epoch, on the driver's queue at most every
    ``PROGRESS_INTERVAL_S``, without waiting for the queue actor's answer: a blocking put
    held rank 0 (and so every rank, at the next all-reduce) for a round trip to an actor
    that shares the CPUs (1.6% of a worker's time on 2 cores). Epoch lines stay blocking puts."""
    if rank != 0 or spec.progress is None:
        return None
    label, last = spec.label or spec.stage.name, [0.0]

    def report(step: int, steps: int | None, rows: int, seconds: float) -> None:
        if seconds - last[0] >= PROGRESS_INTERVAL_S:
            last[0] = seconds
            _put_nowait(spec.progress, {"stage": label, "event": "progress", "epoch": epoch + 1, "step": step,
                                        "steps": steps, "rows": rows, "seconds": seconds})

    return report


def _first_step_time(report, spec: WorkerSpec, rank: int):
    """``report`` that also puts rank 0's first step time on the driver's queue, once per start of
    the worker group: a compiled stage builds its forward and backward graphs in that step."""
    if rank != 0 or spec.progress is None:
        return report
    told = [False]

    def first_then_report(step: int, steps: int | None, rows: int, seconds: float) -> None:
        if not told[0]:
            told[0] = True
            spec.progress.put({"stage": spec.label or spec.stage.name, "event": "compile", "seconds": seconds})
        if report is not None:
            report(step, steps, rows, seconds)

    return first_then_report


def _step_logger(parts: StepParts, spec: WorkerSpec, rank: int, epoch: int, steps: int):
    """Rank 0's scalars of every ``log_every_steps``-th optimizer step of the stage (training loss,
    learning rate, loss scale, gradient norm where the stage clips), sent without waiting, for
    TensorBoard and MLflow; None where there is nothing to send."""
    every = spec.stage.log_every_steps
    if rank != 0 or spec.progress is None or not every:
        return None
    label = spec.label or spec.stage.name

    def log(step: int, loss: torch.Tensor) -> None:
        global_step = epoch * steps + step + 1
        if global_step % every:
            return
        scalars = {"train_loss": float(loss), "lr": parts.optimizer.param_groups[0]["lr"]}
        scaler = getattr(parts.precision, "scaler", None)  # fp16, fp16-master: the loss scale now
        if scaler is not None:
            scalars["loss_scale"] = float(scaler.get_scale())
        if parts.grad_norms:  # the pre-clip norm of this step (read once per epoch otherwise)
            scalars["grad_norm"] = float(parts.grad_norms[-1])
        _put_nowait(spec.progress, {"stage": label, "event": "step", "step": global_step, **scalars})

    return log


def _put_nowait(progress, message: dict) -> None:
    """Fire and forget: to the Ray queue's actor without waiting for its answer, or onto an
    in-process ``queue.Queue``."""
    actor = getattr(progress, "actor", None)
    if actor is not None:
        actor.put_nowait.remote(message)
    else:
        progress.put_nowait(message)


def row_augment(stage: StageConfig, info: DatasetInfo, rank: int) -> RowAugment | None:
    """The stage's image augmentation on this worker (``data.augment``), or None."""
    config = stage.data.augment
    if not config.active or info.image_shape is None:
        return None
    return RowAugment(Augment(config.crop_padding, config.horizontal_flip), info.image_shape, stage.seed, rank,
                      config.mean, config.std)


def _within_epoch(parts: StepParts, scheduler, spec: WorkerSpec, reporter: _Reporter, val: ShardBatches,
                  augment: RowAugment | None, rank: int, epoch: int, steps: int, done: int,
                  last_metrics: dict[str, Any], history: list[dict[str, Any]]) -> EpochHooks:
    """The epoch's validation and checkpoints between its steps (``eval_every_steps``,
    ``checkpoint_every_steps``), skipping the ``done`` steps a checkpoint already holds."""
    stage = spec.stage
    if stage.eval_every_steps is None and stage.checkpoint_every_steps is None and done == 0:
        return NO_HOOKS

    def validate(global_step: int, fraction: float) -> None:
        sums = parts.strategy.all_reduce_sum(evaluate(parts, val, augment))  # sync point (every rank)
        parts.model.train()  # evaluate switched to eval mode; the epoch goes on
        if rank == 0 and spec.progress is not None:  # not a Ray Train report: the driver keeps it apart
            spec.progress.put({"stage": spec.label or stage.name, "event": "eval", "step": global_step,
                               "epoch": fraction, **validation_metrics(parts, sums.tolist())})

    def checkpoint(step: int, global_step: int, fraction: float) -> None:
        # the last completed epoch's metrics ride along: a restart restores early stopping from them
        state = collect_state(parts, scheduler, epoch, last_metrics, step=step, global_step=global_step,
                              history=history)
        reporter.report({"kind": "checkpoint", "epoch": fraction, "step": global_step}, state, epoch_line=False)

    return WithinEpoch(epoch=epoch, steps_per_epoch=steps, batches_done=done, eval_every=stage.eval_every_steps,
                       checkpoint_every=stage.checkpoint_every_steps, evaluate=validate, checkpoint=checkpoint)


class _Reporter:
    """Reports to Ray Train (or a Tune trial) with rank 0's checkpoint; every rank calls it (a barrier)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.local_directory: str | None = None
        """Local mode: the directory last reported (Ray keeps only the latest checkpoint there)."""

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None, *, epoch_line: bool) -> None:
        """``state``: rank 0's checkpoint (``collect_state``), None on the others; ``epoch_line``:
        put ``metrics`` on the driver's queue too (an epoch's, not a checkpoint's within it)."""
        spec = self.spec
        if state is None:
            import ray.train

            ray.train.report(metrics)
            return
        directory = tempfile.mkdtemp(prefix="rayeffi-ckpt-")
        save_atomic(state, Path(directory) / CHECKPOINT_FILE)
        if epoch_line and spec.progress is not None:
            spec.progress.put({"stage": spec.label or spec.stage.name, **metrics})
        if spec.outside_ray_train:  # Tune, or the in-process run's storage, keeps its own copy
            spec.report_to(metrics, directory)
            shutil.rmtree(directory, ignore_errors=True)
            return
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        if not spec.local_mode:
            shutil.rmtree(directory, ignore_errors=True)  # Ray has persisted its copy (sync upload)
            return
        if self.local_directory is not None:  # superseded: the driver reads only the last one
            shutil.rmtree(self.local_directory, ignore_errors=True)
        self.local_directory = directory


def _restore(parts: StepParts, scheduler, spec: WorkerSpec,
             rank: int) -> tuple[int, int, dict[str, Any], list[dict[str, Any]]]:
    """Continue from Ray's checkpoint after a worker failure, or the spec's; return the start
    epoch, the steps of it already made (a checkpoint within it), the metrics of the epoch
    before it and of every epoch so far (none on a fresh start)."""
    checkpoint = None if spec.outside_ray_train else _ray_train_checkpoint()  # Tune trials start afresh
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory)
    elif spec.resume_checkpoint:
        state = load_checkpoint(spec.resume_checkpoint)
    else:
        return fresh_start(spec.stage.seed, rank), 0, {}, []
    history = [row for row in state.get("history") or [] if row.get("epoch", 0) <= state.get("epoch", 0)]
    return *restore_state(parts, scheduler, state, rank), state.get("metrics") or {}, history


def _ray_train_checkpoint():
    """Ray Train's checkpoint after a worker-group restart, or None."""
    import ray.train

    return ray.train.get_checkpoint()
