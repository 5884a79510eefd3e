"""The worker's side of checkpoints: what a Ray Train worker writes each epoch and reads back.

The format itself is built in one place (``checkpoint.py: checkpoint_state``); the
strategy saves and loads the whole training state (model, optimizer, precision,
techniques: collectives where the model or the optimizer is split).
"""

from __future__ import annotations

from typing import Any

import torch

from rayeffi.checkpoint import checkpoint_position, checkpoint_state, rng_state, set_rng_state
from rayeffi.worker.step import StepParts


def collect_state(parts: StepParts, scheduler, epoch: int, metrics: dict[str, Any], *, step: int = 0,
                  global_step: int | None = None, history: list[dict[str, Any]] = ()) -> dict[str, Any] | None:
    """The checkpoint after ``epoch`` completed epochs and ``step`` optimizer steps of the next
    (``checkpoint_every_steps``); every rank calls it (collectives), rank 0 gets it.

    ``history``: every completed epoch's metrics, so the record travels with the weights: a
    driver that died before logging some epochs gets them back on ``--resume``."""
    rng_by_rank = parts.strategy.all_gather_object(rng_state())
    training = parts.strategy.training_state(parts)
    if not parts.strategy.is_rank_zero:
        return None
    return checkpoint_state(epoch=epoch, training=training, scheduler=scheduler.state_dict(), rng=rng_by_rank,
                            metrics=metrics, step=step, global_step=global_step, history=list(history))


def restore_state(parts: StepParts, scheduler, state: dict[str, Any], rank: int) -> tuple[int, int]:
    """Continue from a checkpoint (every rank); return the epoch to start at and the optimizer
    steps of it already made (0: from its start)."""
    parts.strategy.load_training_state(parts, state)
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    set_rng_state(rng[rank] if rank < len(rng) else rng[0])
    return checkpoint_position(state)


def fresh_start(seed: int, rank: int) -> int:
    torch.manual_seed(seed + 1 + rank)  # dropout differs per rank
    return 0
