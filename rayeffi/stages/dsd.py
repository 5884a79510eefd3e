"""``kind: dsd``: a train run whose step carries the DSD technique, summarised per phase."""

from __future__ import annotations

from itertools import groupby
from typing import Any

from rayeffi.recipe.dsd import DsdStageConfig
from rayeffi.stages.base import StageContext, StageResult
from rayeffi.stages.train import run_train_stage


def run_dsd_stage(stage: DsdStageConfig, context: StageContext) -> StageResult:
    result = run_train_stage(stage, context)
    result.extra["rounds"] = phase_summaries(result.history)
    return result


def phase_summaries(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per phase (dense, then sparse and re-dense of each round), from epoch metrics.

    Each carries the target and the *measured* sparsity at the phase's last epoch, per
    layer too, and the metrics at that epoch.
    """
    phases = []
    for (kind, number), rows in groupby(history, key=lambda row: (row["dsd_phase"], row["dsd_round"])):
        rows = list(rows)
        last = rows[-1]
        phases.append({
            "phase": kind,
            "round": number,
            "epochs": [rows[0]["epoch"], last["epoch"]],
            "target_sparsity": last["target_sparsity"],
            "measured_sparsity": last["sparsity"],
            "layer_sparsity": last["layer_sparsity"],
            "lr": last["lr"],
            "train_loss": last["train_loss"],
            "val_loss": last["val_loss"],
            "val_accuracy": last["val_accuracy"],
        })
    return phases
