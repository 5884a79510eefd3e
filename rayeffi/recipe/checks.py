"""Checks on a recipe that its field types cannot express.

The YAML loader (``load.py``) rejects duplicate keys; the pydantic models reject
unknown keys and out-of-range values. What is left lives here, each check a small
function that raises :class:`~rayeffi.errors.UserError` naming the key and the fix:
non-finite numbers anywhere and a Tune metric no stage reports (GPUs are checked against
the cluster once Ray is up: ``driver/preflight.py: check_gpus``).
"""

from __future__ import annotations

import math
from typing import Any

from rayeffi.errors import UserError
from rayeffi.recipe.models import Recipe, StageConfig
from rayeffi.recipe.sections import TASK_METRICS

BASE_METRICS = ("epoch", "train_loss", "val_loss", "val_accuracy", "samples_per_s", "epoch_s", "lr")
"""What every epoch of every stage reports (``worker/metrics.py: epoch_metrics``)."""
LOSS_SCALED_METRICS = ("loss_scale", "skipped_steps", "grad_underflow_fp16")
TECHNIQUE_METRICS = {
    "dsd": ("sparsity", "target_sparsity", "dsd_round"),
    "distill": ("kd_soft_loss", "hint_loss", "distill_hints_only"),
}
STRATEGY_METRICS = {
    "param_server": ("server_updates", "updates_per_s", "staleness_max", "staleness_mean", "server_restores"),
}


def reject_non_finite(raw: Any, where: str = "") -> None:
    """Fail on ``.inf``, ``-.inf`` or ``.nan`` anywhere in the raw recipe.

    YAML reads them as ordinary floats and pydantic's ``gt=0`` lets ``inf`` through, so
    ``optimizer.lr: .inf`` would train to NaN and still exit 0.
    """
    if isinstance(raw, float) and not math.isfinite(raw):
        raise UserError(f"'{where}' is {raw}: give a finite number in the recipe or with --set {where}=...")
    if isinstance(raw, dict):
        for key, value in raw.items():
            reject_non_finite(value, f"{where}.{key}" if where else str(key))
    elif isinstance(raw, (list, tuple)):
        for index, value in enumerate(raw):
            name = value.get("name") if where == "stages" and isinstance(value, dict) else None
            reject_non_finite(value, f"{where}.{name or index}")


def check_recipe(recipe: Recipe) -> None:
    """Every stage: a Tune metric that the stage reports."""
    for stage in recipe.stages:
        check_tune_metric(stage)


def reported_metrics(stage: StageConfig) -> list[str]:
    """The metric names an epoch of ``stage`` reports, which Tune can rank trials by."""
    names = [name for name in BASE_METRICS if name != "val_accuracy"] + list(TASK_METRICS[stage.task.name])
    for config in stage.technique_configs:  # a kind's block and the techniques list alike
        names += TECHNIQUE_METRICS.get(config.name, ())
    names += STRATEGY_METRICS.get(stage.parallel.strategy, ())
    if stage.precision.policy in ("fp16", "fp16-master"):
        names += LOSS_SCALED_METRICS
    return names


def check_tune_metric(stage: StageConfig) -> None:
    if stage.tune is None:
        return
    metrics = reported_metrics(stage)
    if stage.tune.metric not in metrics:
        raise UserError(
            f"stages.{stage.name}.tune.metric: no epoch reports {stage.tune.metric!r}; "
            f"use one of: {', '.join(metrics)}"
        )
