"""Is a reduced precision faster here? A few steps timed in each policy, and what to do about it.

Mixed precision is a speed-up only where the device has fast kernels for every op the
model runs in BF16/FP16. A CPU without them emulates (PyTorch's BF16 flash-attention
backward on an avx512_bf16 Xeon took 60% of a language model's step), and FP16 has no
fast CPU kernels at all: the reduced step can be several times the FP32 one. So the
driver times a few steps of the stage in its policy against FP32, on the device the
workers use, before any worker starts:

- a reduced policy more than :data:`SLOWER_THAN_FP32` times the FP32 step is one
  ``warning:`` line with both times and the policy to use (:func:`slowdown_warning`);
- ``precision: auto`` becomes the reduced policy where it is at least
  :data:`AUTO_MARGIN` faster, FP32 otherwise (:func:`auto_choice`): a precision that
  changes the numerics has to pay for itself.

The functions here are pure: :func:`time_alternating` times any step callables, the rest
reads the figures. ``driver/precision_check.py`` plugs rayeffi's own step into them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

SLOWER_THAN_FP32 = 1.10
"""A reduced policy whose step takes more than this times the FP32 step is warned about."""

AUTO_MARGIN = 0.95
"""``auto`` picks the reduced policy only where its step takes less than this times FP32's."""


def time_alternating(steps: dict[str, Callable[[], None]], max_rounds: int = 5, budget_s: float = 2.0,
                     synchronize: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median milliseconds of one call of each of ``steps``, the calls alternating.

    Each step runs once untimed first (first-call allocations, kernel selection); then
    the steps take turns, so a change in machine load hits all of them alike, for up to
    ``max_rounds`` rounds, fewer where the warm-up round says more would take longer
    than ``budget_s`` (at least one round). ``synchronize`` waits for the device (a GPU's
    queue) before each clock reading.
    """
    start = time.perf_counter()
    for step in steps.values():
        step()
    synchronize()
    warmup_s = time.perf_counter() - start
    rounds = max(1, min(max_rounds, int(budget_s / max(warmup_s, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            synchronize()
            begin = time.perf_counter()
            step()
            synchronize()
            times[name].append(time.perf_counter() - begin)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


@dataclass(frozen=True)
class PolicyTiming:
    """One stage's step in a reduced policy against FP32, on one device."""

    policy: str
    """The reduced policy timed (``bf16``, ``fp16``, ``fp16-master``)."""
    reduced_ms: float
    fp32_ms: float
    device: str
    """Where it was timed: ``cpu`` or ``cuda``."""
    num_rows: int
    """Rows per step (one worker's share of the batch)."""

    @property
    def ratio(self) -> float:
        """The reduced step's time over the FP32 step's: below 1 is a speed-up."""
        return self.reduced_ms / self.fp32_ms

    def describe(self) -> str:
        return (f"{self.policy} {self.reduced_ms:.1f} ms a step against fp32 {self.fp32_ms:.1f} ms "
                f"({self.ratio:.2f}x) on {self.device}, {self.num_rows} rows a step")

    def as_dict(self) -> dict[str, float | str | int]:
        return {"policy": self.policy, "reduced_ms": round(self.reduced_ms, 3), "fp32_ms": round(self.fp32_ms, 3),
                "ratio": round(self.ratio, 3), "device": self.device, "num_rows": self.num_rows}


def slowdown_warning(timing: PolicyTiming, key: str) -> str | None:
    """One ``warning:`` line where the reduced policy is more than :data:`SLOWER_THAN_FP32` times FP32."""
    if timing.ratio <= SLOWER_THAN_FP32:
        return None
    return (f"warning: {key}: {timing.policy} is slower than fp32 on this {timing.device}: {timing.reduced_ms:.1f} ms "
            f"a step against {timing.fp32_ms:.1f} ms ({timing.ratio:.2f}x, {timing.num_rows} rows): "
            f"set {key}=fp32 (or auto, which picks the faster policy)")


def auto_choice(timing: PolicyTiming | None) -> str:
    """The policy ``auto`` runs: the reduced one where it is at least 5% faster than FP32, else ``fp32``
    (also where nothing could be timed)."""
    if timing is None or timing.ratio >= AUTO_MARGIN:
        return "fp32"
    return timing.policy
