"""Driver side of DSD: the stage's rounds in ``summary.json``, from the epoch history."""

from __future__ import annotations

from itertools import groupby
from typing import Any

from rayeffi.task import headline_metrics


def summarise(config: Any, history: list[dict[str, Any]]) -> dict[str, Any]:
    return {"rounds": phase_summaries(history)}


def phase_summaries(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per phase (dense, then sparse and re-dense of each round), from epoch metrics.

    Each carries the target and the *measured* sparsity at the phase's last epoch (over
    every pruned weight), per layer too, every weight matrix left dense with the reason, and the metrics at that epoch (the KD loss too when distillation trains
    alongside).
    """
    phases = []
    for (kind, number), rows in groupby(history, key=lambda row: (row["dsd_phase"], row["dsd_round"])):
        rows = list(rows)
        last = rows[-1]
        phase = {
            "phase": kind,
            "round": number,
            "epochs": [rows[0]["epoch"], last["epoch"]],
            "target_sparsity": last["target_sparsity"],
            "measured_sparsity": last["sparsity"],
            "layer_sparsity": last["layer_sparsity"],
            "dense_layers": last.get("dense_layers", {}),
            "lr": last["lr"],
            "train_loss": last["train_loss"],
            "val_loss": last["val_loss"],
            **headline_metrics(last),
        }
        for key in ("kd_soft_loss", "kd_ce_loss"):
            if key in last:
                phase[key] = last[key]
        phases.append(phase)
    return phases
