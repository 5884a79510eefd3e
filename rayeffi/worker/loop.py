"""The per-worker loop: build the step's parts, then run epochs over the stage's data.

It runs inside every Ray Train worker (or in the driver in local mode) and never
imports Ray Tune. Everything it needs arrives in one :class:`WorkerSpec`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from rayeffi.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_atomic
from rayeffi.data.augment import Augment, RowAugment
from rayeffi.data.info import DatasetInfo
from rayeffi.health import TrainingDiverged, chance_warning, loss_is_unhealthy, non_finite_loss_error
from rayeffi.device import choose_device, to_device
from rayeffi.parallel import build_strategy
from rayeffi.recipe.models import StageConfig
from rayeffi.task import Task
from rayeffi.worker.batches import ShardBatches, estimated_shard_bytes
from rayeffi.worker.build import build_worker
from rayeffi.worker.early_stop import EarlyStopping
from rayeffi.worker.metrics import epoch_metrics
from rayeffi.worker.state import collect_state, fresh_start, restore_state
from rayeffi.worker.step import StepParts, eval_step, train_step

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
    """A ``ray.util.queue.Queue`` the driver prints epoch lines from, or None."""
    local_mode: bool = False
    label: str | None = None
    """Name of this run in progress lines and history (a Tune trial's is ``stage/trial``)."""
    report_to: Any = None
    """Where a local-mode run reports each epoch instead of Ray Train: a Tune trial's
    ``report(metrics, checkpoint_dir)`` (``stages/tune.py``), which persists the checkpoint."""
    shards: dict[str, list] | None = None
    """Per dataset (``train``, ``val``), one object reference per rank to that rank's
    materialized shard, when every shard fits ``data.in_memory_mb`` (``stages/train_run.py``);
    None: the shards stream through Ray Train's split of the datasets."""

    @property
    def in_tune_trial(self) -> bool:
        """A Tune trial in local mode: ``ray.train``'s session calls refuse to run inside Tune,
        so rank, world size, checkpoint and shards come from the spec, reports go to ``report_to``."""
        return self.report_to is not None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec: WorkerSpec = config["spec"]
    stage = spec.stage
    rank, world_size = _rank_and_world_size(spec)

    choice = choose_device(stage.scaling.use_gpu, ray.train.torch.get_device())  # CPU when CUDA is absent
    if not spec.local_mode:  # as many torch threads as the worker's CPUs: more would fight its neighbours
        torch.set_num_threads(max(1, int(stage.scaling.resources_per_worker.get("CPU", 1))))
    strategy = build_strategy(stage.parallel, rank, world_size, choice.device, spec.info)
    parts, scheduler = build_worker(stage, spec.info, strategy, spec.init_checkpoint)
    start_epoch, restored_metrics = _restore(parts, scheduler, spec, rank)
    stopper = EarlyStopping.from_config(stage.early_stop, stage.task.name) if stage.early_stop else None
    if stopper is not None:
        stopper.restore(restored_metrics)
    devices = strategy.all_gather_object(choice.summary(ray.get_gpu_ids()))  # once per start: a collective
    if rank == 0 and spec.progress is not None:  # the driver counts (re)starts of the worker group
        spec.progress.put({"stage": spec.label or stage.name, "event": "start", "from_epoch": start_epoch,
                           "devices": devices})
    augment = row_augment(stage, spec.info, rank)
    train = _shard_batches("train", spec, rank, world_size)
    val = _shard_batches("val", spec, rank, world_size)
    try:
        for epoch in range(start_epoch, stage.total_epochs):
            for technique in parts.techniques:
                technique.on_epoch_start(epoch, parts.model, parts.optimizer)
            lr = parts.optimizer.param_groups[0]["lr"]
            train_sums, train_s = _train_epoch(parts, train, stage, epoch, _progress_reporter(spec, rank, epoch),
                                               augment)
            val_sums = _evaluate(parts, val, augment)
            if parts.scheduler is None:  # a per-step schedule steps in finish_step
                scheduler.step()
            totals = strategy.all_reduce_sum(torch.cat([train_sums, val_sums]))  # sync point (on the device)
            train_loss_sum, train_rows, train_tokens, val_loss_sum, val_correct, val_count, *extra_sums = \
                totals.tolist()  # the epoch's one host sync
            metrics = epoch_metrics(train_loss_sum=train_loss_sum, train_rows=train_rows, val_loss_sum=val_loss_sum,
                                    val_correct=val_correct, val_count=val_count, train_s=train_s, epoch=epoch + 1,
                                    lr=lr, task=parts.task, train_tokens=train_tokens)
            metrics.update(parts.task.extra_metrics(extra_sums))  # the recipe's task.metrics
            for technique in parts.techniques:
                metrics.update(technique.metrics())
            metrics.update(parts.precision.metrics())
            metrics.update(_grad_norm_metrics(parts))
            stop = stopper is not None and stopper.update(metrics)  # all-reduced metrics: every rank agrees
            if stop:
                metrics["stopped_early"] = True
            accuracy = metrics.get("val_accuracy", metrics.get("val_token_accuracy"))  # regression has none
            warning = accuracy is not None and chance_warning(epoch + 1, accuracy, metrics["val_loss"],
                                                              spec.info.num_classes)
            if warning:
                metrics["warning"] = warning
            _report(metrics, parts, scheduler, spec, epoch + 1)
            if stop:
                break
    finally:
        for technique in reversed(parts.techniques):
            technique.teardown()
        strategy.teardown()


def _rank_and_world_size(spec: WorkerSpec) -> tuple[int, int]:
    if spec.in_tune_trial:
        return 0, 1
    context = ray.train.get_context()
    return context.get_world_rank(), context.get_world_size()


def _shard_batches(name: str, spec: WorkerSpec, rank: int, world_size: int) -> ShardBatches:
    layout, info = spec.stage.data_layout, spec.info  # the same layout the driver split the datasets by
    num_rows = info.num_train if name == "train" else info.num_val
    size = estimated_shard_bytes(num_rows, info.num_features, world_size, layout.split_across_workers)
    drop_last = layout.drop_last and name == "train"
    shard = ray.get(spec.shards[name][rank]) if spec.shards is not None else ray.train.get_dataset_shard(name)
    return ShardBatches(shard, layout.rows_per_read, size, spec.stage.data.in_memory_bytes, drop_last)


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
            spec.progress.actor.put_nowait.remote({"stage": label, "event": "progress", "epoch": epoch + 1,
                                                   "step": step, "steps": steps, "rows": rows, "seconds": seconds})

    return report


def row_augment(stage: StageConfig, info: DatasetInfo, rank: int) -> RowAugment | None:
    """The stage's image augmentation on this worker (``data.augment``), or None."""
    config = stage.data.augment
    if not config.active or info.image_shape is None:
        return None
    return RowAugment(Augment(config.crop_padding, config.horizontal_flip), info.image_shape, stage.seed, rank,
                      config.mean, config.std)


def _train_epoch(parts: StepParts, batches: ShardBatches, stage: StageConfig, epoch: int, report=None,
                 augment: RowAugment | None = None):
    """Returns ``[loss_sum, num_rows, num_scored]`` for this worker (on its device) and the epoch's training seconds."""
    parts.model.train()
    device = parts.strategy.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # on the device: no host sync per step
    num_rows = 0  # counted on the host: a count copied to the device each step would wait for the stream
    num_scored = torch.zeros((), dtype=torch.float64, device=device)  # real tokens of a per-token task
    seed = stage.seed * 1000 + epoch if stage.data.shuffle else None
    start = time.perf_counter()
    non_finite = 0  # consecutive non-finite losses
    if augment is not None:
        augment.start_epoch(epoch)
    for step, batch in enumerate(batches.epoch(seed)):
        inputs, targets, extras = _on_device(batch, device, parts.task)
        if augment is not None:
            inputs = augment.train(inputs)  # on the device, before the strategy picks its rows
        inputs, targets, extras = parts.strategy.local_batch(inputs, targets, extras)
        loss = train_step(parts, inputs, targets, extras)
        non_finite = 0 if torch.isfinite(loss).item() else non_finite + 1  # host sync: the step must decide
        if loss_is_unhealthy(non_finite, parts.precision.skips_on_overflow):  # the stage stops: one error line
            lr = parts.optimizer.param_groups[0]["lr"]
            raise TrainingDiverged(non_finite_loss_error(stage.name, epoch + 1, step + 1, lr, parts.precision.name))
        loss_sum += loss.to(device, torch.float64) * len(targets)
        num_rows += len(targets)
        if parts.task.per_token:  # classification and regression score whole rows: counted on the host
            num_scored += parts.task.count(targets)
        if report is not None:
            report(step + 1, batches.steps, num_rows, time.perf_counter() - start)
    rows = torch.tensor([float(num_rows)], dtype=torch.float64).to(device)
    scored = num_scored.reshape(1) if parts.task.per_token else rows
    return torch.cat([loss_sum.reshape(1), rows, scored]), time.perf_counter() - start


def _on_device(batch: dict[str, torch.Tensor], device: torch.device, task: Task):
    """Features (float32, or int64 token ids, as the data holds them), the task's labels and any
    extra column (e.g. cached teacher logits), each moved once."""
    inputs = to_device(batch.pop("features"), device)
    targets = to_device(batch.pop("label"), device, task.label_dtype)
    return inputs, targets, {name: to_device(column, device) for name, column in batch.items()}


def _evaluate(parts: StepParts, batches: ShardBatches, augment: RowAugment | None = None) -> torch.Tensor:
    """``[loss_sum, num_correct, num_scored, ...]`` over this worker's validation shard, on its device
    (``Task.eval_sums``: the recipe's task.metrics append their row-weighted sums)."""
    parts.model.eval()
    sums = None  # on the device: no host sync; its length is the task's (user metrics add entries)
    for batch in batches.epoch(None):
        inputs, targets, _ = _on_device(batch, parts.strategy.device, parts.task)
        if augment is not None:
            inputs = augment.eval(inputs)  # normalisation only
        inputs, targets, _ = parts.strategy.local_batch(inputs, targets, {})
        batch_sums = eval_step(parts, inputs, targets).to(parts.strategy.device, torch.float64)
        sums = batch_sums if sums is None else sums + batch_sums
    return sums if sums is not None else torch.zeros(parts.task.num_eval_sums, dtype=torch.float64,
                                                     device=parts.strategy.device)


def _grad_norm_metrics(parts: StepParts) -> dict[str, float]:
    """``grad_norm``: the mean pre-clip gradient norm of the epoch's steps (overflowed fp16
    steps left out), where the stage clips; the same on every rank (gradients are all-reduced)."""
    if not parts.grad_norms:
        return {}
    norms = torch.stack(parts.grad_norms)
    parts.grad_norms.clear()
    return {"grad_norm": norms.nanmean().item()}  # host sync, once per epoch


def _report(metrics: dict[str, float], parts: StepParts, scheduler, spec: WorkerSpec, epoch: int) -> None:
    """Every rank reports (it is a barrier); rank 0 attaches the checkpoint."""
    state = collect_state(parts, scheduler, epoch, metrics)  # every rank: it may gather shards or stages
    if state is None:
        ray.train.report(metrics)
        return
    directory = tempfile.mkdtemp(prefix="rayeffi-ckpt-")
    save_atomic(state, Path(directory) / CHECKPOINT_FILE)
    if spec.progress is not None:
        spec.progress.put({"stage": spec.label or spec.stage.name, **metrics})
    if spec.in_tune_trial:  # Tune keeps its own copy
        spec.report_to(metrics, directory)
        shutil.rmtree(directory, ignore_errors=True)
        return
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
    if not spec.local_mode:
        shutil.rmtree(directory, ignore_errors=True)  # Ray has persisted its copy (sync upload)


def _restore(parts: StepParts, scheduler, spec: WorkerSpec, rank: int) -> tuple[int, dict[str, Any]]:
    """Continue from Ray's checkpoint after a worker failure, or the spec's; return the start
    epoch and the metrics of the epoch before it (none on a fresh start)."""
    checkpoint = None if spec.in_tune_trial else ray.train.get_checkpoint()  # Tune trials start afresh
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory)
    elif spec.resume_checkpoint:
        state = load_checkpoint(spec.resume_checkpoint)
    else:
        return fresh_start(spec.stage.seed, rank), {}
    return restore_state(parts, scheduler, state, rank), state.get("metrics") or {}
