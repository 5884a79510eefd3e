"""Live progress within an epoch: steps done of the total, samples per second, time left.

Rank 0 of a stage puts a ``progress`` message on the progress queue at most every
``PROGRESS_INTERVAL_S`` (``worker/loop.py``); the driver shows them: on a terminal as one
line redrawn in place (``\\r``), otherwise (CI, ``ray job submit`` logs) as plain lines at
most every ``PLAIN_INTERVAL_S`` per stage or Tune trial. The epoch lines stay as they are.
"""

from __future__ import annotations

from typing import Callable

PLAIN_INTERVAL_S = 10.0
BAR_WIDTH = 20


def progress_text(stage: str, message: dict) -> str:
    step, steps = int(message["step"]), message.get("steps")
    seconds = max(float(message["seconds"]), 1e-9)
    rate = float(message["rows"]) / seconds
    # "progress:" keeps these apart from the epoch lines ("[stage] epoch N: ...") that logs are searched for
    text = f"[{stage}] progress: epoch {int(message['epoch'])}, step {step}"
    if steps:
        done = min(step / steps, 1.0)
        bar = "#" * int(done * BAR_WIDTH) + "." * (BAR_WIDTH - int(done * BAR_WIDTH))
        left = seconds / step * (steps - step) if step else 0.0
        text = f"[{stage}] progress: epoch {int(message['epoch'])} [{bar}] step {step}/{steps}"
        return f"{text}, {rate:.0f} samples/s, about {left:.0f} s left"
    return f"{text}, {rate:.0f} samples/s"


class LiveProgress:
    """Decides what of the workers' progress messages to show, and how."""

    def __init__(self, write: Callable[[str], None], terminal: bool):
        self.write = write
        """Writes raw text (no newline added)."""
        self.terminal = terminal
        self._last_plain: dict[str, float] = {}
        self._bar_shown = False

    def update(self, stage: str, message: dict, now: float) -> None:
        if self.terminal:
            self.write("\r\033[K" + progress_text(stage, message))
            self._bar_shown = True
        elif now - self._last_plain.get(stage, float("-inf")) >= PLAIN_INTERVAL_S:
            self._last_plain[stage] = now
            self.write(progress_text(stage, message) + "\n")

    def clear(self) -> None:
        """Before an ordinary line: take the redrawn line away."""
        if self._bar_shown:
            self.write("\r\033[K")
            self._bar_shown = False
