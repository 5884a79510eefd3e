"""Early stopping on an epoch metric: the patience rule, as a small state machine.

Every rank sees the same all-reduced metrics, so every rank reaches the same decision
without a collective. The counters travel in the reported metrics (``early_stop_best``,
``early_stop_bad_epochs``), so a worker group restarted from a checkpoint goes on counting.
"""

from __future__ import annotations

import math
from typing import Any


class EarlyStopping:
    """Stop after ``patience`` epochs in which ``metric`` did not improve by more than ``min_delta``."""

    def __init__(self, metric: str, patience: int, min_delta: float, greater_is_better: bool) -> None:
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.sign = 1.0 if greater_is_better else -1.0
        self.best: float | None = None
        self.bad_epochs = 0

    @classmethod
    def from_config(cls, config, task_name: str) -> EarlyStopping:
        return cls(config.watched(task_name), config.patience, config.min_delta, config.greater_is_better(task_name))

    def restore(self, metrics: dict[str, Any]) -> None:
        """Continue from a checkpoint's metrics (a fresh start has none)."""
        self.best = metrics.get("early_stop_best")
        self.bad_epochs = int(metrics.get("early_stop_bad_epochs", 0))

    def update(self, metrics: dict[str, Any]) -> bool:
        """Record this epoch's ``metrics``; True when the stage should stop after it. The
        counters are added to ``metrics``. A non-finite value never counts as an improvement."""
        value = float(metrics[self.metric])
        improved = math.isfinite(value) and (self.best is None or self.sign * (value - self.best) > self.min_delta)
        if improved:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        metrics["early_stop_bad_epochs"] = self.bad_epochs
        if self.best is not None:
            metrics["early_stop_best"] = self.best
        return self.bad_epochs >= self.patience
