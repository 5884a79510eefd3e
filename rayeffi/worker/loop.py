"""The per-worker loop: build model, data and optimizer, set up the slots, run epochs.

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

from rayeffi.data.info import DatasetInfo
from rayeffi.models import build_model
from rayeffi.parallel import build_strategy
from rayeffi.recipe.models import StageConfig
from rayeffi.techniques import build_precision, build_techniques
from rayeffi.worker.checkpoint import (
    CHECKPOINT_FILE,
    FORMAT_VERSION,
    load_checkpoint,
    rng_state,
    save_atomic,
    set_rng_state,
)
from rayeffi.worker.optim import build_optimizer, build_scheduler
from rayeffi.worker.step import StepParts, eval_step, train_step

SHUFFLE_BUFFER_ROWS = 2048


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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec: WorkerSpec = config["spec"]
    stage = spec.stage
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()

    torch.manual_seed(stage.seed)  # identical initial weights on every rank
    strategy = build_strategy(stage.parallel, rank, world_size, ray.train.torch.get_device(), spec.info)
    model = build_model(stage.model, spec.info)
    if spec.init_checkpoint:
        model.load_state_dict(load_checkpoint(spec.init_checkpoint)["model"])
    precision = build_precision(stage.precision)
    model = strategy.setup_model(precision.prepare_model(model))  # dtype fixed before DDP sizes its buckets
    optimizer = build_optimizer(stage.optimizer, model)
    precision.setup(model, optimizer)
    strategy.setup_precision(precision)
    techniques = build_techniques(stage, spec.info)
    for technique in techniques:  # entered in list order, torn down in reverse
        technique.setup(strategy.unwrap(model), optimizer)
    scheduler = build_scheduler(stage.optimizer, optimizer, stage.total_epochs, techniques)
    parts = StepParts(model, optimizer, strategy, precision, techniques)

    start_epoch = _restore(parts, scheduler, spec, rank)
    if rank == 0 and spec.progress is not None:  # the driver counts (re)starts of the worker group
        spec.progress.put({"stage": spec.label or stage.name, "event": "start", "from_epoch": start_epoch})
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    batch_size = strategy.rows_per_read(stage.data.batch_size)
    try:
        for epoch in range(start_epoch, stage.total_epochs):
            for technique in techniques:
                technique.on_epoch_start(epoch, model, optimizer)
            lr = optimizer.param_groups[0]["lr"]
            train_sums, train_s = _train_epoch(parts, train_shard, batch_size, stage, epoch)
            val_sums = _evaluate(parts, val_shard, batch_size)
            scheduler.step()
            totals = strategy.all_reduce_sum(torch.cat([train_sums, val_sums]))  # sync point
            metrics = _epoch_metrics(totals, train_s, epoch + 1, lr)
            for technique in techniques:
                metrics.update(technique.metrics())
            metrics.update(precision.metrics())
            _report(metrics, parts, scheduler, spec, epoch + 1)
    finally:
        for technique in reversed(techniques):
            technique.teardown()
        strategy.teardown()


def _batches(shard, batch_size: int, shuffle_seed: int | None, drop_last: bool = False):
    return shard.iter_torch_batches(
        batch_size=batch_size,
        drop_last=drop_last,
        local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS if shuffle_seed is not None else None,
        local_shuffle_seed=shuffle_seed,
    )


def _train_epoch(parts: StepParts, shard, batch_size: int, stage: StageConfig, epoch: int):
    """Returns ``[loss_sum, num_rows]`` for this worker and the epoch's training seconds."""
    parts.model.train()
    device = parts.strategy.device
    loss_sum = torch.zeros((), dtype=torch.float64)
    num_rows = 0
    seed = stage.seed * 1000 + epoch if stage.data.shuffle else None
    step = (parts.strategy.step_functions() or (train_step, eval_step))[0]
    start = time.perf_counter()
    for batch in _batches(shard, batch_size, seed, parts.strategy.drop_last):
        inputs, targets = batch.pop("features").to(device, torch.float32), batch.pop("label").to(device, torch.int64)
        inputs, targets = parts.strategy.local_rows(inputs, targets)
        extras = {name: column.to(device) for name, column in batch.items()}  # e.g. cached teacher logits
        inputs, targets, extras = parts.strategy.group_batch(inputs, targets, extras)
        loss = step(parts, inputs, targets, extras)
        loss_sum += loss.double().cpu() * len(targets)
        num_rows += len(targets)
    return torch.stack([loss_sum, torch.tensor(float(num_rows), dtype=torch.float64)]), time.perf_counter() - start


def _evaluate(parts: StepParts, shard, batch_size: int) -> torch.Tensor:
    """``[loss_sum, num_correct, num_rows]`` over this worker's validation shard."""
    parts.model.eval()
    device = parts.strategy.device
    sums = torch.zeros(3, dtype=torch.float64)
    evaluate = (parts.strategy.step_functions() or (train_step, eval_step))[1]
    for batch in _batches(shard, batch_size, None):
        inputs, targets = batch["features"].to(device, torch.float32), batch["label"].to(device, torch.int64)
        inputs, targets = parts.strategy.local_rows(inputs, targets)
        inputs, targets, _ = parts.strategy.group_batch(inputs, targets, {})
        loss_sum, correct = evaluate(parts, inputs, targets)
        sums += torch.tensor([loss_sum.item(), correct.item(), len(targets)], dtype=torch.float64)
    return sums


def _epoch_metrics(totals: torch.Tensor, train_s: float, epoch: int, lr: float) -> dict[str, float]:
    train_loss_sum, train_rows, val_loss_sum, val_correct, val_rows = totals.tolist()
    return {
        "epoch": epoch,
        "train_loss": train_loss_sum / max(train_rows, 1),
        "val_loss": val_loss_sum / max(val_rows, 1),
        "val_accuracy": val_correct / max(val_rows, 1),
        "samples_per_s": train_rows / max(train_s, 1e-9),
        "epoch_s": train_s,
        "lr": lr,
    }


def _report(metrics: dict[str, float], parts: StepParts, scheduler, spec: WorkerSpec, epoch: int) -> None:
    """Every rank reports (it is a barrier); rank 0 attaches the checkpoint."""
    rng_by_rank = parts.strategy.all_gather_object(rng_state())
    model_state = parts.strategy.model_state_dict(parts.model)  # every rank: it may gather shards or stages
    local = {
        "optimizer": parts.strategy.optimizer_state_dict(parts.optimizer),  # every rank: it may gather shards
        "precision": parts.precision.state_dict(),
        "techniques": {t.name: t.state_dict() for t in parts.techniques},
    }
    stage_states = parts.strategy.gather_stage_states(local)  # collective where the model is pipelined
    if not parts.strategy.is_rank_zero:
        ray.train.report(metrics)
        return
    state = {
        "format": FORMAT_VERSION,
        "epoch": epoch,
        "model": model_state,
        "optimizer": local["optimizer"],
        "scheduler": scheduler.state_dict(),
        "rng": rng_by_rank,
        "precision": local["precision"],
        "techniques": local["techniques"],
        "metrics": metrics,
    }
    if stage_states is not None:
        state["pipeline_stages"] = stage_states  # each stage's optimizer, precision, techniques
    directory = tempfile.mkdtemp(prefix="rayeffi-ckpt-")
    save_atomic(state, Path(directory) / CHECKPOINT_FILE)
    if spec.progress is not None:
        spec.progress.put({"stage": spec.label or spec.stage.name, **metrics})
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
    if not spec.local_mode:
        shutil.rmtree(directory, ignore_errors=True)  # Ray has persisted its copy (sync upload)


def _restore(parts: StepParts, scheduler, spec: WorkerSpec, rank: int) -> int:
    """Continue from Ray's checkpoint after a worker failure, or the spec's; return the start epoch."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory)
    elif spec.resume_checkpoint:
        state = load_checkpoint(spec.resume_checkpoint)
    else:
        torch.manual_seed(spec.stage.seed + 1 + rank)  # dropout differs per rank
        return 0
    parts.strategy.load_model_state_dict(parts.model, state["model"])
    local = parts.strategy.stage_state(state)
    parts.strategy.load_optimizer_state_dict(parts.optimizer, local["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    parts.precision.load_state_dict(local.get("precision", {}))
    for technique in parts.techniques:
        technique.load_state_dict(local.get("techniques", {}).get(technique.name, {}))
    rng = state["rng"]
    set_rng_state(rng[rank] if rank < len(rng) else rng[0])
    return int(state["epoch"])
