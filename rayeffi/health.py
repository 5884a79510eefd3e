"""Is a run still training? Pure checks, on the driver and in the workers.

A diverged run used to finish with exit 0 (fp16 with an absurd learning rate ended with
the loss scale at 2e-16 and a NaN loss; a student at chance with 10% accuracy). On the
driver, :func:`check_health` looks at a stage's epochs so far as they arrive
(``stages/progress.py``) and :func:`check_final` at its last metrics; in the workers,
:func:`loss_is_unhealthy` stops a stage at the step its loss became non-finite
(``worker/loop.py``) and :func:`chance_warning` flags a model that is not learning. The
messages name the epoch, the step and what to lower.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from rayeffi.errors import UserError

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
    def pending(cls) -> str | None:
        """The recorded failure, left for :meth:`take` (the driver marks its summary with it)."""
        with cls._lock:
            return cls._reason

    @classmethod
    def take(cls) -> str | None:
        with cls._lock:
            reason, cls._reason = cls._reason, None
            return reason


NON_FINITE_STEPS_TOLERATED = 50
"""Consecutive non-finite losses a loss-scaled policy (fp16) may skip before the stage stops:
its scaler skips those steps and backs off; a loss that stays non-finite is not an overflow."""

CHANCE_AFTER_EPOCHS = 2
"""The chance check starts after this many epochs (a first epoch may still be warming up)."""


class TrainingDiverged(UserError):
    """The training loss became non-finite (a ``UserError``: one line, exit 2)."""


def non_finite_loss_error(stage: str, epoch: int, step: int, lr: float, policy: str) -> str:
    """The one line a diverged stage stops with."""
    return (f"stages.{stage}: the training loss became non-finite at epoch {epoch}, step {step} "
            f"(lr {lr:g}, precision {policy}): lower optimizer.lr (or add a warm-up: "
            "optimizer.schedule.warmup_epochs), lower distill.temperature/alpha when distilling, "
            "or use precision: fp32")


def loss_is_unhealthy(consecutive_non_finite: int, skips_on_overflow: bool) -> bool:
    """Stop now? Without loss scaling at once; with it, once skipping has not helped."""
    if consecutive_non_finite == 0:
        return False
    return not skips_on_overflow or consecutive_non_finite > NON_FINITE_STEPS_TOLERATED


def chance_warning(epoch: int, val_accuracy: float, val_loss: float, num_classes: int) -> str | None:
    """A warning when validation accuracy sits at chance while the loss is at least that of a
    uniform guess (``ln C``): the model is not learning (often: the learning rate is too high
    for the loss, as with a distillation term from a teacher with large logits)."""
    if epoch < CHANCE_AFTER_EPOCHS:
        return None
    chance = 1.0 / num_classes
    if val_accuracy <= chance + 0.5 * chance * (1 - chance) and val_loss >= math.log(num_classes):
        return (f"val_accuracy {val_accuracy:.3f} is at chance ({chance:.3f}) after {epoch} epochs with val_loss "
                f"{val_loss:.3f} >= ln({num_classes}): the model is not learning: check optimizer.lr "
                "(too high for the loss, e.g. with a large distillation term) and the epochs")
    return None
