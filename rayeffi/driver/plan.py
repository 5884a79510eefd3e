"""``rayeffi validate``: every check ``rayeffi run`` makes before training, and the plan.

No worker starts and nothing is written beside a temporary directory (synthetic data is
generated there to be checked). With ``--address`` it also asks the cluster whether it
has the CPUs the recipe's largest stage reserves and the GPUs its stages ask for.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rayeffi.errors import UserError
from rayeffi.recipe.models import Recipe, StageConfig
from rayeffi.driver.preflight import check_gpus, cpus_needed, preflight


def validate_run(recipe: Recipe, address: str | None = None) -> list[str]:
    """The plan, one line per stage, after every check ``run_recipe`` makes before Ray starts
    (``run.preflight``, GPUs included) and, with ``address``, the cluster's CPUs and GPUs
    (raises UserError)."""
    with tempfile.TemporaryDirectory(prefix="rayeffi-validate-") as out:
        sources = preflight(recipe, Path(out), address)
    lines = [f"recipe {recipe.name}: {len(recipe.stages)} stage(s); data, models, checkpoints, techniques and "
             "combinations checked"]
    lines += [f"  {index}. {_describe(stage)}" for index, stage in enumerate(recipe.stages, start=1)]
    lines += _feature_lines(recipe.stages, sources)
    if address:
        lines.append(_check_cluster(recipe, address))
    return lines


def _describe(stage: StageConfig) -> str:
    workers = stage.scaling.num_workers
    where = "local mode (the driver)" if workers == 0 else f"{workers} worker(s) x {dict(stage.scaling.resources_per_worker)}"
    parts = [f"{stage.name}: kind {stage.kind}, {stage.total_epochs} epochs", f"model {stage.model.name}",
             f"{stage.parallel.strategy} on {where}", f"precision {stage.precision.policy}"]
    techniques = [config.name for config in stage.technique_configs]
    if techniques:
        parts.append(f"techniques {' -> '.join(techniques)}")
    teachers = [t.stage or t.checkpoint for config in stage.technique_configs for t in getattr(config, "teachers", ())]
    if teachers:
        parts.append(f"teachers {', '.join(teachers)}")
    if stage.init_from:
        parts.append(f"starts from {stage.init_from.path}")
    if stage.tune:
        parts.append(f"{stage.tune.num_samples} Tune trials ({stage.tune.max_concurrent_trials} at a time)")
    return "; ".join(parts) + "; hands on its checkpoint"


def _feature_lines(stages, sources) -> list[str]:
    """Which columns the rows' features come from: one line, or one per stage where stages differ."""
    described = {stage.name: _describe_features(source) for stage, source in zip(stages, sources)}
    described = {name: text for name, text in described.items() if text}
    if len(set(described.values())) <= 1:
        return [f"  features: {text}" for text in set(described.values())]
    return [f"  {name} features: {text}" for name, text in described.items()]


def _describe_features(source) -> str | None:
    """``12 columns f0..f11 (skipped: name (string))`` where scalar columns became the features; None
    where one column holds them (a list, tokens, images)."""
    from rayeffi.data.tables import describe_features

    if source.layout is None or not source.layout.feature_columns:
        return None
    return describe_features(source.layout.feature_columns, source.skipped_columns)


def _check_cluster(recipe: Recipe, address: str) -> str:
    import ray

    needed = max(cpus_needed(stage) for stage in recipe.stages)
    ray.init(address=address, log_to_driver=False)
    try:
        resources = ray.cluster_resources()
    finally:
        ray.shutdown()
    check_gpus(recipe, resources)  # as run_recipe does once it has joined the cluster
    have = resources.get("CPU", 0.0)
    if have < needed:
        raise UserError(f"--address {address}: the recipe's largest stage reserves {needed:g} CPUs but the cluster "
                        f"has {have:g}: lower scaling.num_workers or resources_per_worker, or add nodes")
    return f"cluster {address}: {have:g} CPUs, the largest stage reserves {needed:g}"
