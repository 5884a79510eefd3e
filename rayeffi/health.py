"""Is a run still training? Pure checks on the epoch metrics the driver receives.

A diverged run used to finish with exit 0: fp16 with an absurd learning rate ended
with the loss scale at 2e-16 and a NaN loss. :func:`check_health` looks at a stage's
epochs so far and says why the run should stop, or returns None. It touches no
tensor and no Ray: the driver calls it as each epoch's metrics arrive
(``stages/progress.py``) and on the final metrics of each stage.
"""

from __future__ import annotations

import math
import threading
from typing import Any

LOSS_SCALE_FLOOR = 2.0 ** -8
"""Below this the dynamic loss scale has halved at least 24 times from its usual
2^16 start without recovering: every step overflows, the weights are lost, and
further steps are all skipped. A healthy fp16 run keeps its scale far above 1."""
NON_FINITE_EPOCHS = 2
"""Consecutive epochs with a NaN or infinite loss that mean divergence, not a
passing overflow (one bad epoch can be an fp16 overflow the scaler skipped)."""
LOSS_KEYS = ("train_loss", "val_loss")


def check_health(history: list[dict[str, Any]]) -> str | None:
    """Why the stage whose epoch metrics (oldest first) are ``history`` should stop; None if healthy."""
    if not history:
        return None
    latest = history[-1]
    epoch = int(latest.get("epoch", len(history)))
    scale = latest.get("loss_scale")
    if isinstance(scale, (int, float)) and scale < LOSS_SCALE_FLOOR:
        return (f"the fp16 loss scale collapsed to {scale:.3g} at epoch {epoch} (floor {LOSS_SCALE_FLOOR:g}): "
                "every step overflows, so training has diverged; lower optimizer.lr, or use precision: bf16")
    recent = history[-NON_FINITE_EPOCHS:]
    if len(recent) == NON_FINITE_EPOCHS and all(non_finite_loss(row) for row in recent):
        key = non_finite_loss(latest)
        return (f"{key} is {latest[key]} for {NON_FINITE_EPOCHS} epochs in a row (epoch {epoch}): training has "
                "diverged; lower optimizer.lr, or check the data for extreme values")
    return None


def check_final(metrics: dict[str, Any]) -> str | None:
    """A stage that ended with a non-finite loss has diverged, even if it had no time to repeat it."""
    key = non_finite_loss(metrics)
    if key is None:
        return None
    return (f"{key} is {metrics[key]} at the end of the stage (epoch {metrics.get('epoch')}): training has "
            "diverged; lower optimizer.lr, or check the data for extreme values")


def non_finite_loss(metrics: dict[str, Any]) -> str | None:
    """The first loss key of ``metrics`` that is NaN or infinite, or None."""
    for key in LOSS_KEYS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not math.isfinite(value):
            return key
    return None


class HealthStop:
    """The first health failure of this driver, set by the thread that saw it, read by the command line."""

    _lock = threading.Lock()
    _reason: str | None = None

    @classmethod
    def report(cls, reason: str) -> bool:
        """Record ``reason``; True if it is the first (the caller then stops the run)."""
        with cls._lock:
            if cls._reason is not None:
                return False
            cls._reason = reason
            return True

    @classmethod
    def take(cls) -> str | None:
        with cls._lock:
            reason, cls._reason = cls._reason, None
            return reason
