"""TensorBoard event files on the driver: one writer per stage, and per Tune trial.

Written with tensorboardX rather than ``torch.utils.tensorboard``: both produce the
same event files, but torch's writer needs the ``tensorboard`` package (a server,
grpcio, werkzeug, ...) just to write, while tensorboardX is already installed with
``ray[tune]``. Viewing them needs ``tensorboard`` (``pip install tensorboard``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from rayeffi.errors import UserError
from rayeffi.tracking.metrics import loss_scale_points, scalar_metrics, step_scalars

LOSS_SCALE_BY_STEP = "loss_scale_by_step"
"""The loss scale against optimizer steps (every change), beside the per-epoch ``loss_scale``."""


def check_logdir(logdir: Path) -> None:
    """Fail before training if event files cannot be written under ``logdir``."""
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=logdir, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise UserError(
            f"tracking.tensorboard.logdir: cannot write event files under {logdir} ({exc.strerror or exc}): "
            "give a writable directory, or turn TensorBoard off with tracking.tensorboard: false"
        ) from None


class TensorBoardSink:
    """``LOGDIR/STAGE`` (or ``LOGDIR/STAGE/TRIAL_ID``) event files, step = epoch."""

    name = "tensorboard"

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self._writers: dict[str, Any] = {}

    def _writer(self, key: str):
        if key not in self._writers:
            from tensorboardX import SummaryWriter

            # flush every few seconds: a dead driver then loses at most that much
            self._writers[key] = SummaryWriter(logdir=str(self.logdir / key), flush_secs=5)
        return self._writers[key]

    def log_epoch(self, key: str, message: dict[str, Any]) -> None:
        writer = self._writer(key)
        epoch = int(message["epoch"])
        for name, value in scalar_metrics(message).items():
            writer.add_scalar(name, value, global_step=epoch)
        for step, scale in loss_scale_points(message):
            writer.add_scalar(LOSS_SCALE_BY_STEP, scale, global_step=step)

    def log_step(self, key: str, message: dict[str, Any]) -> None:
        """Per-step scalars as ``step/NAME`` series against the stage's optimizer steps."""
        writer = self._writer(key)
        for name, value in step_scalars(message).items():
            writer.add_scalar(f"step/{name}", value, global_step=int(message["step"]))

    def stage_started(self, stage) -> None:
        pass

    def stage_done(self, entry: dict[str, Any]) -> None:
        # close the stage's writers (each holds a thread), its Tune trials' too
        for key in [key for key in self._writers if key.split("/", 1)[0] == entry["name"]]:
            self._writers.pop(key).close()

    def ids(self) -> dict[str, Any]:
        return {"logdir": str(self.logdir)}

    def close(self, status: str) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
