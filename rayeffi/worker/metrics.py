"""An epoch's metrics from its sums: the one formula every execution model reports."""

from __future__ import annotations


def epoch_metrics(
    *, train_loss_sum: float, train_rows: float, val_loss_sum: float, val_correct: float, val_rows: float,
    train_s: float, epoch: int, lr: float,
) -> dict[str, float]:
    return {
        "epoch": epoch,
        "train_loss": train_loss_sum / max(train_rows, 1),
        "val_loss": val_loss_sum / max(val_rows, 1),
        "val_accuracy": val_correct / max(val_rows, 1),
        "samples_per_s": train_rows / max(train_s, 1e-9),
        "epoch_s": train_s,
        "lr": lr,
    }
