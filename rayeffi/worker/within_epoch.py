"""Validation and checkpoints within an epoch (``eval_every_steps``, ``checkpoint_every_steps``).

The Ray Train loop's :class:`EpochHooks`: after each optimizer step whose global step (the
stage's optimizer steps so far, ``epoch x steps_per_epoch + step + 1``) is a multiple of N,
except an epoch's last step (the epoch's own validation and checkpoint follow it). Every rank
takes as many steps (equal shards), so every rank calls the hook at the same step and the
all-reduce of the validation sums and the checkpoint's collectives meet.
"""

from __future__ import annotations

from typing import Callable

from rayeffi.worker.epoch import EpochHooks


class WithinEpoch(EpochHooks):
    """``evaluate(global_step, epoch)`` every ``eval_every`` and ``checkpoint(step, global_step,
    epoch)`` every ``checkpoint_every`` global steps (None: never); ``epoch`` is fractional
    (1.5: half-way through the second epoch), ``step`` the steps made in this epoch."""

    def __init__(self, *, epoch: int, steps_per_epoch: int, batches_done: int, eval_every: int | None,
                 checkpoint_every: int | None, evaluate: Callable[[int, float], None],
                 checkpoint: Callable[[int, int, float], None]) -> None:
        self.epoch, self.steps_per_epoch, self.batches_done = epoch, steps_per_epoch, batches_done
        self.eval_every, self.checkpoint_every = eval_every, checkpoint_every
        self.evaluate, self.checkpoint = evaluate, checkpoint

    def after_step(self, step: int, last: bool) -> None:
        if last:
            return
        global_step = self.epoch * self.steps_per_epoch + step + 1
        fraction = round(self.epoch + (step + 1) / self.steps_per_epoch, 4)
        if self.eval_every is not None and global_step % self.eval_every == 0:
            self.evaluate(global_step, fraction)
        if self.checkpoint_every is not None and global_step % self.checkpoint_every == 0:
            self.checkpoint(step + 1, global_step, fraction)
