"""An event timeline of a pipeline: when each stage computed which micro-batch.

Each ``PipelineStage``'s compute calls (forward, backward, and the weight half of a
zero-bubble backward) are timed with ``time.perf_counter``; waiting for a neighbour's
activations or gradients happens between them, in the schedule. The busy share of
a step per worker gives the measured bubble, against GPipe's ideal
``(K - 1) / (M + K - 1)`` (Huang et al. 2019, section 2.2).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

ACTIONS = {"forward_one_chunk": "F", "backward_one_chunk": "B", "backward_weight_one_chunk": "W"}


@dataclass
class Timeline:
    """Compute intervals ``(action, chunk, microbatch, start_s, end_s)`` on one worker."""

    events: list[tuple[str, int, int, float, float]] = field(default_factory=list)
    recording: bool = True

    def instrument(self, stage) -> None:
        """Wrap ``stage``'s compute methods so each call is recorded."""
        for method, action in ACTIONS.items():
            if hasattr(stage, method):
                setattr(stage, method, self._timed(getattr(stage, method), action, stage.stage_index))

    def _timed(self, call, action: str, chunk: int):
        @functools.wraps(call)
        def timed(microbatch, *args, **kwargs):
            start = time.perf_counter()
            try:
                return call(microbatch, *args, **kwargs)
            finally:
                if self.recording:
                    self.events.append((action, chunk, int(microbatch), start, time.perf_counter()))

        return timed

    def clear(self) -> None:
        self.events.clear()


def ideal_bubble(num_stages: int, num_microbatches: int) -> float:
    """GPipe's idle fraction of a step with equal stages and free communication."""
    return (num_stages - 1) / (num_microbatches + num_stages - 1)


def busy_seconds(events, start: float, end: float) -> float:
    """Compute time inside ``[start, end]`` (intervals on one worker do not overlap)."""
    return sum(max(0.0, min(e, end) - max(s, start)) for _, _, _, s, e in events)


def measured_bubble(busy_by_worker: list[float], step_s: float) -> float:
    """Idle share of the workers' time over a step: ``1 - sum(busy) / (workers x step)``."""
    return 1.0 - sum(busy_by_worker) / (len(busy_by_worker) * step_s)
