"""Which parts of an epoch message are numbers a tracker can plot (pure functions)."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

NOT_SERIES = frozenset({"epoch"})
"""Keys that index the series rather than being one."""


def scalar_metrics(message: dict[str, Any]) -> dict[str, float]:
    """Every finite number in an epoch's metrics, nested mappings flattened with ``/``.

    ``{"val_loss": 0.3, "staleness_histogram": {"0": 140, "1": 21}, "dsd_phase": "sparse"}``
    gives ``{"val_loss": 0.3, "staleness_histogram/0": 140.0, "staleness_histogram/1": 21.0}``.
    Strings, lists (``loss_scale_history``: see :func:`loss_scale_points`) and booleans are left out.
    """
    scalars: dict[str, float] = {}
    for key, value in message.items():
        if key in NOT_SERIES:
            continue
        if isinstance(value, dict):
            nested = scalar_metrics({str(inner): item for inner, item in value.items()})
            scalars.update({f"{key}/{inner}": item for inner, item in nested.items()})
        elif isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value):
            scalars[key] = float(value)
    return scalars


def step_scalars(message: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of one step's message (``log_every_steps``), without its ``step`` index."""
    return {key: value for key, value in scalar_metrics(message).items() if key != "step"}


def loss_scale_points(message: dict[str, Any]) -> list[tuple[int, float]]:
    """The epoch's ``[optimizer step, loss scale]`` points (mixed precision with loss scaling)."""
    return [(int(step), float(scale)) for step, scale in message.get("loss_scale_history") or []]


def flatten_config(config: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"dotted.key": "value"}`` (MLflow params are flat strings)."""
    if isinstance(config, dict):
        flat: dict[str, str] = {}
        for key, value in config.items():
            flat.update(flatten_config(value, f"{prefix}{key}."))
        return flat
    if isinstance(config, (list, tuple)) and any(isinstance(item, dict) for item in config):
        flat = {}
        for index, item in enumerate(config):
            flat.update(flatten_config(item, f"{prefix}{index}."))
        return flat
    return {prefix.rstrip("."): str(config)}
