"""An epoch's metrics from its sums: the one formula every execution model reports."""

from __future__ import annotations

from rayeffi.task import CLASSIFICATION, Task


def epoch_metrics(
    *, train_loss_sum: float, train_rows: float, val_loss_sum: float, val_correct: float, val_count: float,
    train_s: float, epoch: int, lr: float, task: Task = CLASSIFICATION, train_tokens: float | None = None,
) -> dict[str, float]:
    """``val_count``: the scored validation targets (rows, or real tokens of a per-token task)."""
    val_loss = val_loss_sum / max(val_count, 1)
    metrics = {
        "epoch": epoch,
        "train_loss": train_loss_sum / max(train_rows, 1),
        "val_loss": val_loss,
        **task.metrics(val_loss, val_correct, val_count),
        "samples_per_s": train_rows / max(train_s, 1e-9),
        "epoch_s": train_s,
        "lr": lr,
    }
    if task.per_token and train_tokens is not None:
        metrics["tokens_per_s"] = train_tokens / max(train_s, 1e-9)  # real (scored) tokens, padding left out
    return metrics
