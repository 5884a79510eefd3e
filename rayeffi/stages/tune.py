"""Any stage with a ``tune:`` block runs as a Ray Tune experiment.

Each trial is a small driver: it applies its sampled values to the stage config
(dotted keys, as ``--set`` does), starts one Ray Train run with
``TuneReportCallback`` passing every epoch's report up to Tune, and returns. ASHA
(Li et al. 2020) may stop a trial after any epoch; stopping the trial ends its Train
run, whose controller and workers it owns. The best trial's checkpoint becomes the
stage's artifact, and every trial's config, status and metrics go to ``summary.json``.

Trials hold no CPU (the Train run inside reserves the workers); they hold one unit of
the custom resource ``rayeffi_trial_driver`` instead, because a trial holding a CPU
can starve its own Train run on a small machine and deadlock.

With ``scaling.num_workers: 0`` a trial trains in its own process (local mode: no
controller, no worker group, ~10 s less start-up per trial on a small machine); it then
holds one worker's resources itself and reports each epoch with ``tune.report``, Tune
persisting the checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import time
import uuid
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from rayeffi.task import HEADLINE_KEYS
from rayeffi.errors import UserError
from rayeffi.health import non_finite_loss
from rayeffi.recipe.load import set_dotted
from rayeffi.recipe.models import SearchDomain, StageConfig
from rayeffi.stages.base import StageContext, StageResult, worker_spec
from rayeffi.stages.ray_session import TRIAL_RESOURCE
from rayeffi.stages.train_run import build_trainer, publish_checkpoint



def stage_variant(stage: StageConfig, values: dict[str, Any]) -> StageConfig:
    """``stage`` with each dotted key set to its value, validated again."""
    raw = stage.model_dump()
    for key, value in values.items():
        set_dotted(raw, key, value)
    raw["tune"] = None  # a trial is a plain run of the stage
    return type(stage).model_validate(raw)


def check_search_space(stage: StageConfig) -> None:
    """Every value a search may draw must make a valid stage: fail before Ray starts."""
    for key, domain in stage.tune.search_space.items():
        for value in _extreme_values(domain):
            try:
                stage_variant(stage, {key: value})
            except (UserError, ValueError) as exc:
                detail = str(exc).splitlines()[0] if not hasattr(exc, "errors") else _first_error(exc)
                raise UserError(
                    f"stages.{stage.name}.tune.search_space.{key}: value {value!r} does not make a valid "
                    f"stage ({detail}); fix the key or its values"
                ) from None


def _first_error(exc) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def _extreme_values(domain: SearchDomain) -> list[Any]:
    if domain.choice is not None:
        return list(domain.choice)
    if domain.grid is not None:
        return list(domain.grid)
    if domain.randint is not None:
        return [domain.randint[0], domain.randint[1] - 1]
    return list(domain.uniform or domain.loguniform)


def _tune_domain(domain: SearchDomain):
    if domain.choice is not None:
        return tune.choice(list(domain.choice))
    if domain.grid is not None:
        return tune.grid_search(list(domain.grid))
    if domain.uniform is not None:
        return tune.uniform(*domain.uniform)
    if domain.loguniform is not None:
        return tune.loguniform(*domain.loguniform)
    return tune.randint(*domain.randint)


def _trial(config: dict[str, Any], stage: StageConfig, context: StageContext) -> None:
    """One trial: a driver that starts a Ray Train run of the stage variant (or, in local
    mode, runs the worker loop itself)."""
    trial_id = tune.get_context().get_trial_id()
    variant = stage_variant(stage, config)
    local_mode = variant.scaling.num_workers == 0
    # a trial Tune runs again (its process or node died) continues from its last checkpoint: in
    # local mode Tune's (a local copy, whatever the storage); a Train run finds its own under
    # the same run name
    retried = tune.get_checkpoint() if local_mode else None
    with retried.as_directory() if retried is not None else contextlib.nullcontext() as resume_from:
        spec = worker_spec(
            variant, context,
            resume_checkpoint=resume_from,
            local_mode=local_mode,
            label=f"{stage.name}/{trial_id}",
            report_to=_report_to_tune if local_mode else None,
        )
        callbacks = [] if local_mode else [TuneReportCallback()]
        build_trainer(variant, context, spec, callbacks=callbacks, run_name=f"{stage.name}-{trial_id}").fit()


def _report_to_tune(metrics: dict[str, Any], checkpoint_dir: str) -> None:
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))


def trial_resources(stage: StageConfig) -> dict[str, float]:
    """What one trial holds: the trial-driver unit, plus one worker's resources in local mode."""
    if stage.scaling.num_workers:
        return {"cpu": 0, TRIAL_RESOURCE: 1}
    worker = stage.scaling.resources_per_worker
    resources = {"cpu": worker.get("CPU", 1.0), TRIAL_RESOURCE: 1}
    if stage.scaling.use_gpu:
        resources["gpu"] = stage.scaling.gpus_per_worker
    resources.update({name: amount for name, amount in worker.items() if name not in ("CPU", "GPU")})
    return resources


def release_trial_results() -> None:
    """Let the driver forget each trial result once Tune has handled it.

    Ray Tune (2.60) keeps the future of every call it makes to a trial's actor, each
    epoch's result among them, until the trial ends (``RayActorManager``: its
    ``_schedule_tracked_actor_task`` adds to ``_tracked_actors_to_task_futures``, which
    only a stopping actor clears), and with the future the result in the driver's object
    store: 2-3 KB a trial epoch (docs/benchmarks.md, soak). A resolved future has left the
    manager's event manager; after each result, this keeps in the trial's set the futures
    still pending there. Applied once, in the driver; a Ray whose Tune lacks these parts
    is left as it is.
    """
    try:
        from ray.air.execution._internal.actor_manager import RayActorManager
    except ImportError:
        return
    resolved = getattr(RayActorManager, "_actor_task_resolved", None)
    if resolved is None or getattr(resolved, "releases_results", False):
        return

    def actor_task_resolved(self, tracked_actor_task, result):
        try:
            futures = self._tracked_actors_to_task_futures.get(tracked_actor_task._tracked_actor)
            pending = self._actor_task_events.get_futures()
        except AttributeError:  # a Tune built otherwise: left as it is
            futures = None
        if futures:
            futures.intersection_update(pending)
        return resolved(self, tracked_actor_task, result)

    actor_task_resolved.releases_results = True
    RayActorManager._actor_task_resolved = actor_task_resolved


def run_tuned_stage(stage: StageConfig, context: StageContext) -> StageResult:
    """Run the stage's trials; the best one's checkpoint becomes the artifact."""
    settings = stage.tune
    release_trial_results()
    if TRIAL_RESOURCE not in ray.cluster_resources():
        raise UserError(
            f"stages.{stage.name}.tune: the cluster has no '{TRIAL_RESOURCE}' resource; start its nodes with "
            f"--resources '{{\"{TRIAL_RESOURCE}\": 8}}' (a private local Ray has it)"
        )
    trial_context = dataclasses.replace(context, progress=None)  # the printer stays on the driver
    trainable = tune.with_resources(
        tune.with_parameters(_trial, stage=stage, context=trial_context), trial_resources(stage)
    )
    scheduler = None
    if settings.scheduler.name == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="training_iteration",
            max_t=10_000,  # trials end on their own epoch count; ASHA only cuts them short
            grace_period=settings.scheduler.grace_period,
            reduction_factor=settings.scheduler.reduction_factor,
        )
    tuner = tune.Tuner(
        trainable,
        param_space={key: _tune_domain(domain) for key, domain in settings.search_space.items()},
        tune_config=tune.TuneConfig(
            metric=settings.metric,
            mode=settings.mode,
            num_samples=settings.num_samples,
            scheduler=scheduler,
            max_concurrent_trials=settings.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=f"{stage.name}-tune-{uuid.uuid4().hex[:8]}", storage_path=str(context.storage_path), verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),  # local-mode trials' own, as Train keeps
            # a trial whose process dies (its node left) runs again, as many times as a worker group restarts
            failure_config=tune.FailureConfig(max_failures=stage.scaling.max_failures),
        ),
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # Tune prints its own tables; the epoch lines say it all
        results = tuner.fit()
    wall_s = time.perf_counter() - start
    if context.progress is not None:  # the trials' last epochs may still be queued: each trial's epochs_run counts them
        context.progress.drain()
    trials = [_trial_summary(result, stage, context) for result in results]
    finished = [r for r in results if r.error is None and r.metrics and _has_checkpoint(r)
                and _diverged(r) is None]  # a trial whose loss went NaN is never the best
    num_diverged = sum(1 for trial in trials if str(trial.get("error", "")).startswith("diverged: "))
    if num_diverged and context.progress is not None:
        context.progress.echo(f"[{stage.name}] {num_diverged} of {len(trials)} trials diverged (non-finite loss): "
                              "listed as errors, left out of the choice of the best")
    if not finished and num_diverged == len(trials):
        raise UserError(f"stages.{stage.name}.tune: every trial diverged (non-finite loss); narrow the search "
                        "space towards smaller optimizer.lr values")
    if not finished:
        first_error = next((t["error"] for t in trials if t.get("error")), "no trial reported a checkpoint")
        raise RuntimeError(f"stage {stage.name}: every Tune trial failed; first error: {first_error}")
    best = max(finished, key=lambda r: r.metrics[settings.metric] * (1 if settings.mode == "max" else -1))
    if CHECKPOINT_PATH_KEY in best.metrics:  # a Train run's, persisted by Ray Train
        artifact = publish_checkpoint(best.metrics[CHECKPOINT_PATH_KEY], context.stage_dir)
    else:  # a local-mode trial's, persisted by Tune
        with best.checkpoint.as_directory() as checkpoint_dir:
            artifact = publish_checkpoint(checkpoint_dir, context.stage_dir)
    best_id = best.metrics["trial_id"]
    history = context.progress.stage_history(f"{stage.name}/{best_id}") if context.progress else []
    extra = {"num_workers": stage.scaling.num_workers, "best_trial": best_id,
             "best_config": dict(best.config), "trials": trials, "diverged_trials": num_diverged}
    return StageResult(stage.name, stage.kind, artifact, history, wall_s, extra)


def _has_checkpoint(result) -> bool:
    return CHECKPOINT_PATH_KEY in result.metrics or result.checkpoint is not None


def _trial_summary(result, stage: StageConfig, context: StageContext) -> dict[str, Any]:
    metrics = {k: v for k, v in (result.metrics or {}).items() if not isinstance(v, dict) or k == "config"}
    metrics.pop("config", None)
    trial_id = metrics.get("trial_id") or _trial_id_from_path(result.path)
    epochs = len(context.progress.stage_history(f"{stage.name}/{trial_id}")) if context.progress else None
    summary = {
        "trial_id": trial_id,
        "config": dict(result.config or {}),
        "status": "error" if result.error else "done",
        "epochs_run": epochs,
        "metrics": {k: metrics[k] for k in ("epoch", "train_loss", "val_loss", *HEADLINE_KEYS) if k in metrics},
    }
    if result.error is not None:
        message = str(result.error).strip().splitlines()[-1][:500]
        if "TrainingDiverged" in message:  # the step stopped on non-finite losses (worker/loop.py)
            message = "diverged: " + message.split(": ", 1)[-1]
        summary["error"] = message
    elif _diverged(result):
        summary["status"], summary["error"] = "error", _diverged(result)
    return summary


def _diverged(result) -> str | None:
    """Why a trial that ran to its end has diverged (a NaN or infinite loss), or None."""
    metrics = result.metrics or {}
    key = non_finite_loss(metrics)
    if result.error is not None or key is None:
        return None
    return f"diverged: {key} is {metrics[key]} at epoch {metrics.get('epoch')}"


def _trial_id_from_path(path: str | None) -> str | None:
    return path.rstrip("/").rsplit("/", 1)[-1] if path else None
