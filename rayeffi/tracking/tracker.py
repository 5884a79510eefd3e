"""The driver's trackers behind one object; a tracker that fails mid-run is dropped, training goes on."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable

from rayeffi.tracking.tensorboard import TensorBoardSink, check_logdir

TENSORBOARD_DIR = "tensorboard"


class Tracker:
    """Fans each event out to the sinks (TensorBoard, MLflow).

    Events come from two threads (epochs from the progress thread, stage starts and ends
    from the main one), hence the lock. The first exception of a sink prints one warning
    and removes it: experiment tracking never kills training.
    """

    def __init__(self, sinks: list, echo: Callable[[str], None] = print):
        self._sinks = list(sinks)
        self._all = list(sinks)  # ids of a dropped sink still go to summary.json
        self._echo = echo
        self._lock = threading.Lock()

    def log_epoch(self, key: str, message: dict[str, Any]) -> None:
        """``key``: the stage name, or ``STAGE/TRIAL_ID`` for a Tune trial."""
        self._each("log_epoch", key, message)

    def log_step(self, key: str, message: dict[str, Any]) -> None:
        """``message``: one optimizer step's scalars and its global ``step`` (``log_every_steps``)."""
        self._each("log_step", key, message)

    def stage_started(self, stage) -> None:
        self._each("stage_started", stage)

    def stage_done(self, entry: dict[str, Any]) -> None:
        """``entry``: the stage's summary.json entry."""
        self._each("stage_done", entry)

    def close(self, status: str) -> None:
        self._each("close", status)

    def ids(self) -> dict[str, Any]:
        """What summary.json keeps under ``tracking`` (MLflow's run ids)."""
        return {sink.name: sink.ids() for sink in self._all if sink.ids()}

    def _each(self, method: str, *args) -> None:
        with self._lock:
            for sink in list(self._sinks):
                try:
                    getattr(sink, method)(*args)
                except Exception as exc:  # noqa: BLE001  (any failure of a tracker, by design)
                    self._sinks.remove(sink)
                    detail = (str(exc).strip().splitlines() or [""])[0][:300]
                    self._echo(f"warning: {sink.name} tracking failed ({type(exc).__name__}: {detail}); "
                               "training goes on without it")


def open_tracker(recipe, out_dir: Path, echo: Callable[[str], None] = print, resume: bool = False) -> Tracker:
    """Check and open the recipe's trackers before Ray starts; a bad setting is a ``UserError``."""
    config = recipe.tracking
    sinks: list = []
    if config.tensorboard.enabled:
        logdir = Path(config.tensorboard.logdir or out_dir / TENSORBOARD_DIR).absolute()
        check_logdir(logdir)
        sinks.append(TensorBoardSink(logdir))
    if config.mlflow is not None:
        from rayeffi.tracking.mlflow_sink import MlflowSink

        previous = _previous_ids(out_dir).get("mlflow") if resume else None
        sinks.append(MlflowSink(config.mlflow, recipe.model_dump(mode="json"), previous))
    return Tracker(sinks, echo)


def _previous_ids(out_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((out_dir / "summary.json").read_text()).get("tracking") or {}
    except (OSError, ValueError):
        return {}
