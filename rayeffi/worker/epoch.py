"""One epoch on one worker: train, validate, and the epoch's metrics. The only epoch loop.

Both execution models call it: the Ray Train loop (``worker/loop.py``, every rank) and the
parameter server's gradient worker (``param_server/worker.py``). What the parameter server
does around each step (pull weights before it, push accrued gradients after it, skip the
batches a replaced worker already did) comes in through :class:`EpochHooks`, whose no-op
defaults are the Ray Train loop's (data parallelism synchronises inside the step).
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator

import torch

from rayeffi.data.augment import RowAugment
from rayeffi.data.info import DatasetInfo
from rayeffi.device import to_device
from rayeffi.health import TrainingDiverged, chance_warning, loss_is_unhealthy, non_finite_loss_error
from rayeffi.models.inputs import INPUT_PREFIX
from rayeffi.recipe.models import StageConfig
from rayeffi.task import Task
from rayeffi.worker.batches import ShardBatches, estimated_shard_bytes
from rayeffi.worker.metrics import epoch_metrics
from rayeffi.worker.step import StepParts, eval_step, train_step


class EpochHooks:
    """What an execution model does around each training step; every hook a no-op."""

    batches_done: int = 0
    """Batches at the epoch's start that are skipped, not trained: a replaced worker did them."""

    def before_step(self, step: int) -> None:
        """Before step ``step`` (0-based, over the whole epoch) reads its batch's weights."""

    def after_step(self, step: int, last: bool) -> None:
        """After step ``step``'s optimizer step; ``last``: the epoch's final batch."""


NO_HOOKS = EpochHooks()


def stage_batches(shard, name: str, stage: StageConfig, info: DatasetInfo, num_workers: int) -> ShardBatches:
    """A worker's batches of its shard of dataset ``name`` (``train`` or ``val``), read as the
    stage's ``DataLayout`` says (the layout the driver split the datasets by)."""
    layout = stage.data_layout
    num_rows = info.num_train if name == "train" else info.num_val
    size = estimated_shard_bytes(num_rows, info.num_features, num_workers, layout.split_across_workers)
    drop_last = layout.drop_last and name == "train"
    return ShardBatches(shard, layout.rows_per_read, size, stage.data.in_memory_bytes, drop_last,
                        row_bytes=estimated_shard_bytes(1, info.num_features, 1, False))


def train_epoch(parts: StepParts, batches: ShardBatches, stage: StageConfig, epoch: int, *,
                hooks: EpochHooks = NO_HOOKS, augment: RowAugment | None = None, report=None, log_step=None):
    """Train on this worker's batches of epoch ``epoch`` (0-based); return ``[loss_sum, num_rows,
    num_scored]`` (FP64, on its device) and the epoch's training seconds. ``report(step, steps,
    rows, seconds)``: live progress, or None; ``log_step(step, loss)``: each step's loss for the
    per-step scalars (``log_every_steps``), or None. Raises :class:`TrainingDiverged` (one line)
    once the loss stays non-finite (``health.loss_is_unhealthy``)."""
    parts.model.train()
    device = parts.strategy.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # on the device: no host sync per step
    num_rows = 0  # counted on the host: a count copied to the device each step would wait for the stream
    num_scored = torch.zeros((), dtype=torch.float64, device=device)  # real tokens of a per-token task
    seed = stage.seed * 1000 + epoch if stage.data.shuffle else None  # a replaced worker sees the same order
    start = time.perf_counter()
    non_finite = 0  # consecutive non-finite losses
    if augment is not None:
        augment.start_epoch(epoch)
    for step, batch, last in _with_last(batches.epoch(seed)):
        if step < hooks.batches_done:
            if augment is not None:  # draw the skipped batch's crops and flips: the next batches get theirs
                augment.train(batch["features"])
            continue
        hooks.before_step(step)
        inputs, targets, extras = on_device(batch, device, parts.task)
        if augment is not None:
            inputs = augment.train(inputs)  # on the device, before the strategy picks its rows
        inputs, targets, extras = parts.strategy.local_batch(inputs, targets, extras)
        loss = train_step(parts, inputs, targets, extras)
        non_finite = 0 if torch.isfinite(loss).item() else non_finite + 1  # host sync: the step must decide
        if loss_is_unhealthy(non_finite, parts.precision.skips_on_overflow):  # the stage stops: one error line
            lr = parts.optimizer.param_groups[0]["lr"]
            raise TrainingDiverged(non_finite_loss_error(stage.name, epoch + 1, step + 1, lr, parts.precision.name))
        hooks.after_step(step, last)
        if log_step is not None:
            log_step(step, loss)
        loss_sum += loss.to(device, torch.float64) * len(targets)
        num_rows += len(targets)
        if parts.task.per_token:  # classification and regression score whole rows: counted on the host
            num_scored += parts.task.count(targets)
        if report is not None:
            report(step + 1, batches.steps, num_rows, time.perf_counter() - start)
    rows = torch.tensor([float(num_rows)], dtype=torch.float64).to(device)
    scored = num_scored.reshape(1) if parts.task.per_token else rows
    return torch.cat([loss_sum.reshape(1), rows, scored]), time.perf_counter() - start


def _with_last(batches: Iterable) -> Iterator[tuple[int, Any, bool]]:
    """``(step, batch, last)``: one batch read ahead, so a streamed shard knows its last step too."""
    iterator = iter(batches)
    ahead = next(iterator, None)
    step = 0
    while ahead is not None:
        batch, ahead = ahead, next(iterator, None)
        yield step, batch, ahead is None
        step += 1


def on_device(batch: dict[str, torch.Tensor], device: torch.device, task: Task):
    """Features (float32, or int64 token ids, as the data holds them), the task's labels and any
    extra column (e.g. cached teacher logits, the model's named inputs ``input.NAME``), each moved once."""
    inputs = to_device(batch.pop("features"), device)
    targets = to_device(batch.pop("label"), device, task.label_dtype)
    return inputs, targets, {name: to_device(column, device) for name, column in batch.items()}


def named_input_columns(extras: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's named inputs among a batch's extra columns (``models/inputs.py``)."""
    return {name: column for name, column in extras.items() if name.startswith(INPUT_PREFIX)}


def evaluate(parts: StepParts, batches: ShardBatches, augment: RowAugment | None = None) -> torch.Tensor:
    """``[loss_sum, num_correct, num_scored, ...]`` over this worker's validation shard, on its device
    (``Task.eval_sums``: the recipe's task.metrics append their row-weighted sums)."""
    parts.model.eval()
    sums = None  # on the device: no host sync; its length is the task's (user metrics add entries)
    for batch in batches.epoch(None):
        inputs, targets, extras = on_device(batch, parts.strategy.device, parts.task)
        if augment is not None:
            inputs = augment.eval(inputs)  # normalisation only
        inputs, targets, extras = parts.strategy.local_batch(inputs, targets, named_input_columns(extras))
        batch_sums = eval_step(parts, inputs, targets, extras).to(parts.strategy.device, torch.float64)
        sums = batch_sums if sums is None else sums + batch_sums
    return sums if sums is not None else torch.zeros(parts.task.num_eval_sums, dtype=torch.float64,
                                                     device=parts.strategy.device)


def finish_metrics(parts: StepParts, sums: list[float], *, train_s: float, epoch: int, lr: float,
                   num_classes: int) -> dict[str, Any]:
    """The epoch's metrics from every worker's summed figures ``[train_loss_sum, train_rows,
    train_scored, val_loss_sum, val_correct, val_count, *task.metrics sums]`` (``train_epoch``'s
    then ``evaluate``'s), with the task's user metrics, every technique's and the precision
    policy's figures, ``grad_norm``, and the at-chance ``warning``. ``epoch``: 0-based."""
    train_loss_sum, train_rows, train_tokens, val_loss_sum, val_correct, val_count, *extra_sums = sums
    metrics: dict[str, Any] = epoch_metrics(
        train_loss_sum=train_loss_sum, train_rows=train_rows, val_loss_sum=val_loss_sum, val_correct=val_correct,
        val_count=val_count, train_s=train_s, epoch=epoch + 1, lr=lr, task=parts.task, train_tokens=train_tokens)
    metrics.update(parts.task.extra_metrics(extra_sums))  # the recipe's task.metrics
    for technique in parts.techniques:
        metrics.update(technique.metrics())
    metrics.update(parts.precision.metrics())
    metrics.update(grad_norm_metrics(parts))
    accuracy = metrics.get("val_accuracy", metrics.get("val_token_accuracy"))  # regression has none
    warning = accuracy is not None and chance_warning(epoch + 1, accuracy, metrics["val_loss"], num_classes)
    if warning:
        metrics["warning"] = warning
    return metrics


def validation_metrics(parts: StepParts, sums: list[float]) -> dict[str, float]:
    """``val_loss``, the task's validation figures and its user metrics from every worker's summed
    ``evaluate`` figures ``[val_loss_sum, val_correct, val_count, *task.metrics sums]``: a
    validation within an epoch (``eval_every_steps``), which has no training figures."""
    val_loss_sum, val_correct, val_count, *extra_sums = sums
    val_loss = val_loss_sum / max(val_count, 1)
    return {"val_loss": val_loss, **parts.task.metrics(val_loss, val_correct, val_count),
            **parts.task.extra_metrics(extra_sums)}


def grad_norm_metrics(parts: StepParts) -> dict[str, float]:
    """``grad_norm``: the mean pre-clip gradient norm of the epoch's steps (overflowed fp16
    steps left out), where the stage clips; the same on every rank (gradients are all-reduced)."""
    if not parts.grad_norms:
        return {}
    norms = torch.stack(parts.grad_norms)
    parts.grad_norms.clear()
    return {"grad_norm": norms.nanmean().item()}  # host sync, once per epoch
