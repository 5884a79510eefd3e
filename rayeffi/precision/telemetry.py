"""What a mixed-precision policy reports each epoch: loss scale, skipped steps, FP16 underflow.

Every number here is computed from gradients after the data-parallel all-reduce, so
all ranks hold the same values and rank 0's report speaks for all of them.
"""

from __future__ import annotations

from typing import Any

MAX_SCALE_POINTS_PER_EPOCH = 256
"""Bound on ``loss_scale_history`` points per epoch; the epoch's last point is always kept."""


class PrecisionTelemetry:
    """Counts steps and skips, keeps the sampled underflow and the epoch's scale changes.

    ``loss_scale_history`` is a compact list of ``[step, scale]`` points: the scale the
    step ran with, recorded at the first step of each epoch, whenever it changes, and
    at the epoch's last step. ``step`` counts optimizer steps of the stage from 1,
    skipped ones included. The underflow fraction is sampled on the first step of each
    epoch that did not overflow (gradients on an overflowing step are not meaningful).
    """

    def __init__(self) -> None:
        self.num_steps = 0
        self.num_skipped = 0
        self.underflow: float | None = None
        self.wants_sample = True
        self._points: list[list[float]] = []
        self._last_point: list[float] | None = None

    def record_sample(self, underflow: float) -> None:
        self.underflow = underflow
        self.wants_sample = False

    def record_step(self, scale_used: float, skipped: bool) -> None:
        self.num_steps += 1
        self.num_skipped += int(skipped)
        self._last_point = [self.num_steps, scale_used]
        changed = not self._points or self._points[-1][1] != scale_used
        if changed and len(self._points) < MAX_SCALE_POINTS_PER_EPOCH - 1:
            self._points.append(self._last_point)

    def epoch_metrics(self, loss_scale: float, with_history: bool = True) -> dict[str, Any]:
        """The epoch's metrics; starts the next epoch (new points, a new underflow sample)."""
        metrics: dict[str, Any] = {"loss_scale": loss_scale, "skipped_steps": self.num_skipped}
        if self.underflow is not None:
            metrics["grad_underflow_fp16"] = self.underflow
        if with_history:
            points = self._points
            if self._last_point is not None and (not points or points[-1] != self._last_point):
                points = [*points, self._last_point]
            metrics["loss_scale_history"] = points
        self._points, self._last_point, self.wants_sample = [], None, True
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "num_skipped": self.num_skipped, "underflow": self.underflow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_steps = int(state.get("num_steps", 0))
        self.num_skipped = int(state.get("num_skipped", 0))
        self.underflow = state.get("underflow")
