"""The report's first table: one row per stage, and what each stage changed.

A DSD or distillation user opens the report for one number: how the task's headline
metric moved from the stage a stage started from (dense 0.8125 -> DSD 0.8250 is
"+1.25 pt"). A stage is compared with, in this order: its own dense phase (a DSD stage
that trained one), the stage its ``init_from`` names (``previous`` or a name), the first
teacher stage of its distillation. Accuracies change in points, perplexity and RMSE in
per cent of the earlier value.
"""

from __future__ import annotations

from typing import Any

from rayeffi.task import HEADLINE_KEYS, headline_metrics

TEXT_COLUMNS = ("stage", "kind", "change", "from")
LOWER_IS_BETTER = ("val_perplexity", "val_rmse")


def stage_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage of ``summary.json``: ``stage``, ``kind`` (only where it says more than
    the name), the headline metrics, ``parameters``, ``nonzero_parameters``, ``sparsity``,
    ``epochs``, ``wall_s``, and ``change``/``from``/``better`` against the stage's baseline
    (absent where it has none); ``None`` where an older summary lacks a figure."""
    stages = summary.get("stages") or []
    recipe_stages = {stage.get("name"): stage for stage in (summary.get("recipe") or {}).get("stages") or []
                     if isinstance(stage, dict)}
    rows = []
    for index, stage in enumerate(stages):
        metrics = stage.get("metrics") or {}
        recipe_stage = recipe_stages.get(stage["name"], {})
        row = {"stage": stage["name"], "kind": _kind(stage, recipe_stage), **headline_metrics(metrics)}
        for key in ("parameters", "nonzero_parameters"):
            row[key] = stage.get(key)
        row["sparsity"] = metrics.get("sparsity")
        history = stage.get("history") or []
        row["epochs"] = metrics.get("epoch", history[-1]["epoch"] if history else None)
        row["wall_s"] = stage.get("wall_s")
        row.update(_change(stage, metrics, baseline(stage, recipe_stage, stages[:index])))
        rows.append(row)
    return rows


def _kind(stage: dict[str, Any], recipe_stage: dict[str, Any]) -> str:
    """``dsd``, ``train + distill``: blank when it only repeats the stage's name."""
    techniques = [item.get("name") for item in recipe_stage.get("techniques") or [] if isinstance(item, dict)]
    kind = " + ".join([stage["kind"], *techniques])
    return "" if kind == stage["name"] else kind


def baseline(stage: dict[str, Any], recipe_stage: dict[str, Any], earlier: list[dict[str, Any]]
             ) -> tuple[str, dict[str, Any]] | None:
    """``(label, metrics)`` of what the stage is compared with, or ``None``."""
    dense = [row for row in stage.get("history") or [] if row.get("dsd_phase") == "dense"]
    if dense:
        return "dense phase", dense[-1]
    by_name = {entry["name"]: entry for entry in earlier}
    init_from = recipe_stage.get("init_from")
    if isinstance(init_from, dict):  # the long form, {path, strict, prefix}
        init_from = init_from.get("path")
    if init_from == "previous" and earlier:
        return earlier[-1]["name"], earlier[-1].get("metrics") or {}
    if init_from in by_name:
        return init_from, by_name[init_from].get("metrics") or {}
    for teacher in _teacher_stages(recipe_stage):
        if teacher in by_name:
            return f"teacher {teacher}", by_name[teacher].get("metrics") or {}
    return None


def _teacher_stages(recipe_stage: dict[str, Any]) -> list[str]:
    blocks = [recipe_stage.get("distill"), *(recipe_stage.get("techniques") or [])]
    return [teacher.get("stage") for block in blocks if isinstance(block, dict) and block.get("teachers")
            for teacher in block["teachers"] if isinstance(teacher, dict) and teacher.get("stage")]


def _change(stage: dict[str, Any], metrics: dict[str, Any], base: tuple[str, dict[str, Any]] | None
            ) -> dict[str, Any]:
    if base is None:
        return {}
    label, base_metrics = base
    key = next((k for k in HEADLINE_KEYS if k in headline_metrics(metrics) and k in headline_metrics(base_metrics)),
               None)
    if key is None:
        return {"from": label}
    return {"change": change_text(key, base_metrics[key], metrics[key]), "from": label,
            "better": _better(key, base_metrics[key], metrics[key])}


def change_text(key: str, before: float, after: float) -> str:
    """``+1.25 pt`` for an accuracy (percentage points), ``-3.2 %`` (of ``before``) otherwise."""
    if "accuracy" in key:
        return f"{(after - before) * 100:+.2f} pt"
    if before == 0:
        return ""
    return f"{(after - before) / abs(before) * 100:+.1f} %"


def _better(key: str, before: float, after: float) -> bool | None:
    if after == before:
        return None
    return (after < before) if key in LOWER_IS_BETTER else (after > before)
