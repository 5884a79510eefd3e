"""Training health checks as pure functions: a diverged loss, a model stuck at chance.

A run that diverges or never learns should say so, not exit 0 with 10% accuracy. The
worker loop (``worker/loop.py``) calls these; the messages name the epoch, the step and
what to lower.
"""

from __future__ import annotations

import math

from rayeffi.errors import UserError

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
