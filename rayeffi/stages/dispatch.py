"""Every stage runs through :func:`run_stage`, whatever its kind and techniques.

    techniques' prepare (list order)    e.g. teachers' checkpoints, the soft-label cache
    one execution path:
        parameter server                    Ray actors (stages/param_server.py)
        Tune                                trials that each start a Train run (stages/tune.py)
        in process, without Ray             scaling.num_workers 0 (stages/local_run.py)
        one Ray Train run                   (stages/train_run.py)
    techniques' summarise (list order)  e.g. DSD's rounds with measured sparsity

A stage's kind only names its sugar (``kind: dsd`` is a train stage whose techniques list
starts with its ``dsd`` block), so there is one runner, not one per kind. The Ray paths are
imported when a stage takes them, so a run whose stages all run in process never imports Ray.
"""

from __future__ import annotations

import dataclasses

from rayeffi.recipe.models import StageConfig
from rayeffi.stages.base import StageContext, StageResult
from rayeffi.stages.local_run import needs_ray, run_in_process
from rayeffi.techniques import TECHNIQUES, DriverInputs


def run_stage(stage: StageConfig, context: StageContext) -> StageResult:
    stage, context, summary = prepare_techniques(stage, context)
    if stage.parallel.strategy == "param_server":  # Ray actors, not a Train run
        from rayeffi.stages.param_server import run_param_server_stage

        result = run_param_server_stage(stage, context)
    elif stage.tune is not None:
        from rayeffi.stages.tune import run_tuned_stage

        result = run_tuned_stage(stage, context)
    elif not needs_ray(stage):
        result = run_in_process(stage, context)
    else:
        from rayeffi.stages.train_run import run_train

        result = run_train(stage, context)
    result.extra.update(summary)
    if result.artifact.metrics.get("stopped_early"):  # early_stop: the stage ended before its epochs
        result.extra["stopped_early"] = {"epoch": result.artifact.metrics["epoch"], "of_epochs": stage.total_epochs}
    if stage.techniques:
        result.extra["techniques"] = [config.name for config in stage.technique_configs]
    for config in stage.technique_configs:
        result.extra.update(TECHNIQUES[config.name].summarise(config, result.history))
    return result


def prepare_techniques(stage: StageConfig, context: StageContext) -> tuple[StageConfig, StageContext, dict]:
    """Each technique's driver-side preparation, in list order, before any worker or trial starts."""
    configs, summary, source = [], {}, context.source
    checkpoints = {name: artifact.checkpoint for name, artifact in context.artifacts.items()}
    for config in stage.technique_configs:
        inputs = DriverInputs(stage=stage, checkpoints=checkpoints, source=source, stage_dir=context.stage_dir,
                              in_process=not needs_ray(stage))
        prepared = TECHNIQUES[config.name].prepare(config, inputs)
        configs.append(prepared.config)
        source = prepared.source
        summary.update(prepared.summary)
    return stage.with_technique_configs(configs), dataclasses.replace(context, source=source), summary
