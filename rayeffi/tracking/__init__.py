"""Experiment tracking on the driver: TensorBoard event files (on by default) and MLflow runs.

Every epoch's metrics already reach the driver through the progress queue
(``stages/progress.py``); the tracker writes them from there, so no worker code knows
about tracking.
"""

from rayeffi.tracking.metrics import flatten_config, scalar_metrics
from rayeffi.tracking.tracker import TENSORBOARD_DIR, Tracker, open_tracker

__all__ = ["TENSORBOARD_DIR", "Tracker", "flatten_config", "open_tracker", "scalar_metrics"]
