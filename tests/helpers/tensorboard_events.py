"""Reading back what rayeffi wrote for TensorBoard, with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path


def scalars(logdir: str | Path, tag: str) -> dict[int, float]:
    """``{step: value}`` of one scalar tag in the event files under ``logdir``."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    return {event.step: event.value for event in accumulator.Scalars(tag)}
