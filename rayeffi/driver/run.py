"""The driver: a validated recipe -> its stages, in order -> ``summary.json``.

Everything that can be checked without Ray (data files, checkpoint paths) is checked
before Ray starts, so a bad input costs no cluster time and leaves nothing behind. A recipe
whose stages all run in process (``stages/local_run.py: needs_ray``: local mode, no Tune, no
parameter server) starts no Ray and never imports it; one that has a stage needing Ray starts
it at the start, and its local-mode stages still run in process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from rayeffi.data.sources import DataSource, resolve_source, sample_rows
from rayeffi.task import build_task, headline_metrics
from rayeffi.errors import UserError
from rayeffi.health import HealthStop, TrainingDiverged, check_final
from rayeffi.models import check_model
from rayeffi.models.checkpointing import checkpoint_blocks
from rayeffi.models.inputs import INPUT_PREFIX, check_named_inputs
from rayeffi.parallel import STRATEGY_CHECKS
from rayeffi.recipe.models import Recipe, StageConfig
from rayeffi.recipe.paths import use_import_paths
from rayeffi.driver.resume import PROGRESS_FILE, plan_resume
from rayeffi.driver.run_dir import SUMMARY_FILE, claim_run_dir, environment, parameter_counts
from rayeffi.stages import Artifact, StageContext, run_stage
from rayeffi.stages.live import LiveProgress
from rayeffi.stages.local_run import needs_ray
from rayeffi.stages.progress import Progress
from rayeffi.stages.ray_session import check_address, ray_is_initialized, start_ray
from rayeffi.driver.storage import resolve_storage
from rayeffi.techniques import TECHNIQUES
from rayeffi.tracking import open_tracker
from rayeffi.weights.read import FORMATS as WEIGHT_FORMATS
from rayeffi.precision import fp32_layers, needs_onednn_off, reduced_precision_autocast
from rayeffi.precision.recurrent import run_lstms_in_fp32
from rayeffi.driver.precision_check import PrecisionChoice, check_precision, with_policy



def run_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    address: str | None = None,
    echo: Callable[[str], None] | None = None,
    storage: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run every stage of ``recipe``; write and return ``out_dir/summary.json``.

    ``echo`` receives the progress lines (default: this process's stdout as it is now,
    so libraries that print while a stage runs can be silenced without losing them).
    ``storage`` is Ray Train's storage, a path or a pyarrow URI (default ``out_dir/ray``).
    ``resume`` continues the run already in ``out_dir`` (see rayeffi/driver/resume.py);
    without it, a directory holding a run is refused unless ``overwrite`` (driver/run_dir.py).
    """
    live = None
    if echo is None:
        stream = sys.stdout
        echo = lambda line: print(line, file=stream, flush=True)  # noqa: E731
        # progress within epochs: redrawn in place on a terminal, bounded plain lines elsewhere
        live = LiveProgress(lambda text: (stream.write(text), stream.flush()), terminal=stream.isatty())
    out_dir = Path(out_dir).absolute()
    choices: dict[str, PrecisionChoice] = {}
    sources = preflight(recipe, out_dir, address, choices)
    stages = [with_policy(stage, choices[stage.name].policy) if stage.precision.policy == "auto" else stage
              for stage in recipe.stages]  # auto decided once, here: every worker runs the same policy
    claim_run_dir(out_dir, resume=resume, overwrite=overwrite)  # after the checks: a bad recipe replaces nothing
    plan = plan_resume(recipe, out_dir, storage) if resume else None
    storage = plan.storage if plan else resolve_storage(storage, out_dir)
    tracker = open_tracker(recipe, out_dir, echo, resume=resume)  # a bad logdir or URI fails before Ray starts
    uses_ray = any(needs_ray(stage) for stage in recipe.stages)
    started_ray = uses_ray and _start_ray(recipe, address)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (out_dir / PROGRESS_FILE).unlink(missing_ok=True)  # a fresh run's epoch log starts empty
    progress = Progress(echo, log_path=out_dir / PROGRESS_FILE, on_epoch=tracker.log_epoch,
                        on_step=tracker.log_step, live=live,
                        in_process=not uses_ray)
    summary: dict[str, Any] = {"recipe": recipe.model_dump(mode="json"), "status": "running",
                               "storage": storage, "environment": environment(Path(recipe.folders[0])), "stages": []}
    timed = {name: choice.as_dict() for name, choice in choices.items() if choice.requested != "fp32"}
    if timed:
        summary["precision"] = timed
    if plan:
        summary["resumes"] = plan.resumes
    start = time.perf_counter()
    previous = None
    artifacts = {}
    try:
        for stage, source in zip(stages, sources):
            if plan and stage.name in plan.completed:  # --resume: done before the driver died
                entry = plan.completed[stage.name]
                previous = artifacts[stage.name] = Artifact(entry["checkpoint"], entry["metrics"])
                summary["stages"].append(entry)
                echo(f"[{stage.name}] complete in an earlier run: skipped")
                continue
            echo(f"[{stage.name}] {stage.kind}: {stage.total_epochs} epochs {_where(stage)}")
            context = StageContext(
                stage_dir=out_dir / "stages" / stage.name,
                storage_path=storage,
                source=source,
                previous=previous,
                artifacts=artifacts,
                progress=progress,
                progress_queue=progress.queue,
                resume_checkpoint=plan.checkpoints.get(stage.name) if plan else None,
            )
            if context.resume_checkpoint:
                progress.seed(stage.name, plan.histories[stage.name], plan.evals[stage.name])
                resumed = plan.resumes[-1]
                within = f", step {resumed['from_step']} of the next" if resumed["from_step"] else ""
                echo(f"[{stage.name}] resuming from the checkpoint of epoch {resumed['from_epoch']}{within}")
            tracker.stage_started(stage)
            summary["tracking"] = tracker.ids()
            write_summary(summary, out_dir)  # the stage's tracking run ids on disk before it runs (--resume)
            result = run_stage(stage, context)
            result.extra["restarts"] = progress.restarts(stage.name)
            result.extra["data_info"] = dataclasses.asdict(source.info)  # what rayeffi.load_model builds with
            result.extra["data_columns"] = source.columns(extra=False).columns  # the user's columns it read
            result.extra.update(parameter_counts(result.artifact.checkpoint))
            if stage.name in progress.devices:  # where each worker computed (a GPU fallback shows here)
                result.extra["devices"] = progress.devices[stage.name]
            previous = artifacts[stage.name] = result.artifact
            summary["stages"].append(result.summary())
            tracker.stage_done(summary["stages"][-1])
            summary["tracking"] = tracker.ids()
            write_summary(summary, out_dir)
            figures = "  ".join(f"{key} {value:.4f}" for key, value in headline_metrics(previous.metrics).items())
            stopped = result.extra.get("stopped_early")
            early = f" (stopped early after epoch {stopped['epoch']} of {stopped['of_epochs']})" if stopped else ""
            echo(f"[{stage.name}] done in {result.wall_s:.1f} s{early}: {figures}")
            diverged = check_final(previous.metrics)
            if diverged:  # the next stage would start from non-finite weights
                raise TrainingDiverged(f"stages.{stage.name}: {diverged}")
        if recipe.stages[-1].data.test_path:
            summary["test"] = _test(recipe.stages[-1], sources[-1], summary["stages"][-1], out_dir, echo)
        summary["status"] = "complete"
        summary["wall_s"] = round(time.perf_counter() - start, 3)
        summary["environment"]["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_summary(summary, out_dir)
        logdir = tracker.ids().get("tensorboard", {}).get("logdir")
        echo(f"next: rayeffi report {out_dir}" + (f"   |   tensorboard --logdir {logdir}" if logdir else ""))
    except BaseException as exc:
        summary["status"], error = ended_by(exc)
        if error:
            summary["error"] = error
        if out_dir.is_dir():  # deleted during the run: the caller says so; writing would bring it back
            write_summary(summary, out_dir)
        raise
    finally:
        progress.close()
        tracker.close(summary["status"])
        if started_ray:
            _stop_ray()
    return summary


def _test(stage: StageConfig, source: DataSource, entry: dict[str, Any], out_dir: Path,
          echo: Callable[[str], None]) -> dict[str, Any]:
    """The last stage's model scored once on ``data.test_path`` (``evaluate.py``)."""
    from rayeffi.evaluate import score

    if entry.get("best_config"):  # a tuned stage: the best trial's model keys
        from rayeffi.stages.tune import stage_variant

        stage = stage_variant(stage, entry["best_config"])
    test = score(stage, source.info, entry["checkpoint"], stage.data.test_path, out_dir / "data" / "test",
                 f"stages.{stage.name}.data.test_path")
    figures = "  ".join(f"{key} {value:.4f}" for key, value in test["metrics"].items() if key.startswith("test_"))
    echo(f"[test] {stage.name} on {test['rows']} rows of {test['data']}: {figures}")
    return {"stage": stage.name, **test}


def ended_by(exc: BaseException) -> tuple[str, str | None]:
    """``summary.json``'s status for a run that raised ``exc``, and its one-line error:
    ``diverged`` (a non-finite loss or loss scale: the driver's health check, a worker's
    ``TrainingDiverged``), ``interrupted`` (Ctrl-C, SIGTERM), ``error`` (another one-line
    ``UserError``) or ``failed`` (anything else, e.g. a worker's crash)."""
    if isinstance(exc, KeyboardInterrupt):
        reason = HealthStop.pending()
        return ("diverged", reason) if reason else ("interrupted", None)
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, TrainingDiverged):
        return "diverged", line
    return ("error" if isinstance(exc, UserError) else "failed"), line


def _start_ray(recipe: Recipe, address: str | None) -> bool:
    """Start (or join) Ray and check its GPUs before any worker starts (never a hang waiting for
    GPUs); return True if this call started it."""
    import ray

    started_ray = start_ray(address, max(cpus_needed(stage) for stage in recipe.stages),
                            import_paths=recipe.folders)
    try:
        check_gpus(recipe, ray.cluster_resources())
    except UserError:
        if started_ray:
            ray.shutdown()
        raise
    return started_ray


def _stop_ray() -> None:
    import ray

    ray.shutdown()


def preflight(recipe: Recipe, out_dir: Path, address: str | None = None,
              choices: dict[str, PrecisionChoice] | None = None) -> list[DataSource]:
    """Every check a run makes before Ray starts; returns each stage's data source.

    ``run_recipe`` and ``rayeffi validate`` both call this, so validate passes exactly what
    run would start: each stage (:func:`check_stage`), the links between stages, the
    address, and, without an address, the GPUs the stages ask for against this machine (or
    the Ray this process already joined). With an address, the caller checks the cluster's
    GPUs with :func:`check_gpus` once it has joined it. ``choices`` receives each stage's
    precision check (``driver/precision_check.py``): the policy ``auto`` resolved to, the times.
    """
    use_import_paths(recipe.folders)  # the recipe's modules import with no PYTHONPATH (recipe/paths.py)
    stage_names = {stage.name for stage in recipe.stages}
    sources = [check_stage(stage, out_dir, stage_names, choices) for stage in recipe.stages]
    check_stage_links(recipe.stages, sources)
    last = recipe.stages[-1]
    if last.data.test_path:  # scored after the last stage: its columns and shape checked now
        from rayeffi.evaluate import test_source

        test_source(last, sources[-1].info, last.data.test_path, out_dir / "data" / "test",
                    f"stages.{last.name}.data.test_path")
    check_address(address)
    if address is None:  # a private Ray gets this machine's GPUs: check in seconds, before it starts
        check_gpus(recipe, _joined_ray_resources() if ray_is_initialized() else local_resources())
    return sources


def _joined_ray_resources() -> dict[str, float]:
    import ray

    return ray.cluster_resources()


def local_resources() -> dict[str, float]:
    """What a private Ray started on this machine would have, as far as the checks go."""
    return {"GPU": float(torch.cuda.device_count())}


def check_stage(stage: StageConfig, out_dir: Path, stage_names: set[str],
                choices: dict[str, PrecisionChoice] | None = None) -> DataSource:
    if stage.tune is not None:
        from rayeffi.stages.tune import check_search_space  # Ray Tune: only for a stage that uses it

        check_search_space(stage)
    links = {"previous", *stage_names}
    init = stage.init_from
    if init is not None and init.path not in links and not Path(init.path).exists():
        raise UserError(
            f"stages.{stage.name}.init_from: {Path(init.path).absolute()} does not exist and {init.path!r} is not "
            f"an earlier stage: give 'previous', an earlier stage's name, or {WEIGHT_FORMATS}"
        )
    source = resolve_source(stage.data, stage.seed, out_dir / "data", stage.task)
    augment = stage.data.augment
    if augment.active and source.info.image_shape is None:
        raise UserError(f"stages.{stage.name}.data.augment works on images, and this data has no image shape: "
                        "set data.image_shape=[channels, height, width] or remove data.augment")
    if augment.mean is not None and len(augment.mean) != source.info.image_shape[0]:
        raise UserError(f"stages.{stage.name}.data.augment.mean has {len(augment.mean)} values but the images have "
                        f"{source.info.image_shape[0]} channels: give one mean and std per channel")
    choice = _check_model_contract(stage, source)
    if choices is not None:
        choices[stage.name] = choice
    _check_step_options(stage, source)
    _check_weight_files(stage, source, links)
    if stage.parallel.strategy in STRATEGY_CHECKS:
        STRATEGY_CHECKS[stage.parallel.strategy](stage, source.info)
    for key, config in stage.technique_keys():
        TECHNIQUES[config.name].check(config, stage, source.info, key)
    return source


def check_stage_links(stages, sources: list[DataSource]) -> None:
    """A stage that starts from an earlier stage's weights (``init_from``) builds a model they
    load into (under its ``prefix`` and ``strict``): checked here, before Ray starts and before
    the earlier stage spends its time.

    Skipped where the earlier stage searches model keys with Tune (its best trial decides
    the shape).
    """
    from rayeffi.models import build_model

    for index, stage in enumerate(stages):
        init = stage.init_from
        if init is None or index == 0 and init.path == "previous":
            continue
        names = [earlier.name for earlier in stages[:index]]
        if init.path == "previous":
            source_index = index - 1
        elif init.path in names:
            source_index = names.index(init.path)
        else:
            continue  # a weights file: _check_weight_files read it
        earlier = stages[source_index]
        if earlier.tune is not None and any(key.startswith("model.") for key in earlier.tune.search_space):
            continue
        if earlier.model == stage.model and sources[source_index].info == sources[index].info and not init.prefix:
            continue
        weights = build_model(earlier.model, sources[source_index].info).state_dict()
        _check_weights(weights, f"the weights of stage {earlier.name!r}", build_model(stage.model, sources[index].info),
                       init, f"stages.{stage.name}.init_from", stage.name)


def _check_weight_files(stage: StageConfig, source: DataSource, links: set) -> None:
    """Read every weights file the stage starts from and match it to its model, before Ray starts."""
    from rayeffi.models import build_model
    from rayeffi.weights import read_weights

    init = stage.init_from
    checks = []
    if init is not None and init.path not in links:
        checks.append((init.path, stage.model, init, f"stages.{stage.name}.init_from"))
    for key, config in stage.technique_keys():
        for index, teacher in enumerate(getattr(config, "teachers", ())):
            if teacher.stage is None and teacher.checkpoint and teacher.model is not None:
                checks.append((teacher.checkpoint, teacher.model, teacher, f"{key}.teachers.{index}"))
    for path, model_config, options, key in checks:
        try:
            weights = read_weights(path)
        except UserError as exc:
            raise UserError(f"{key}: {exc}") from None
        _check_weights(weights, f"weights {Path(path).absolute()}", build_model(model_config, source.info), options,
                       key, stage.name)


def _check_weights(weights: dict, source: str, model: torch.nn.Module, options, key: str, stage_name: str) -> None:
    """``weights`` load into ``model`` under ``options``' prefix and strict; strict: false prints what it skips."""
    from rayeffi.weights import load_weights, skipped_message

    short_key = key.split(".", 2)[-1]  # init_from, distill.teachers.0: what the fix names
    try:
        match = load_weights(model, weights, prefix=options.prefix, strict=options.strict, source=source,
                             key=short_key)
    except UserError as exc:
        raise UserError(f"{key}: {exc}") from None
    if not match.fits:  # strict: false, once per run, on the driver
        print(f"[{stage_name}] {key}: {skipped_message(match, source)}", flush=True)


def _check_step_options(stage: StageConfig, source: DataSource) -> None:
    """The optimizer class builds with the recipe's arguments; a per-step warm-up fits in the run."""
    from rayeffi.worker.optim import check_optimizer, steps_per_epoch

    key = f"stages.{stage.name}.optimizer"
    check_optimizer(stage.optimizer, key)
    schedule = stage.optimizer.schedule
    if schedule.per_step:
        total = stage.total_epochs * steps_per_epoch(source.info.num_train, stage.data_layout,
                                                     stage.scaling.num_workers)
        if schedule.warmup_steps >= total:
            raise UserError(f"{key}.schedule.warmup_steps {schedule.warmup_steps} is not shorter than the run's "
                            f"{total} optimizer steps ({stage.total_epochs} epochs of {total // stage.total_epochs}): "
                            f"use fewer warm-up steps or more epochs")


def _check_model_contract(stage: StageConfig, source: DataSource) -> PrecisionChoice:
    """Build the model and run 2 real rows forward and backward in the stage's precision, with the
    named inputs the data carry (the forward takes every ``data.inputs`` argument; none reaches a
    one-tensor strategy); then, for a reduced or ``auto`` precision, time a worker's batch in it
    against FP32 (``driver/precision_check.py``)."""
    policy = stage.precision.policy
    # auto: the dry forward runs in FP32; the timing then tries the reduced policy
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp16-master": torch.float16}.get(policy)

    def autocast_for(model):
        if dtype is None:
            return contextlib.nullcontext()
        run_lstms_in_fp32(model)  # as the policies run them on a CPU worker
        return reduced_precision_autocast("cpu", dtype, needs_onednn_off(model, "cpu"))

    task = build_task(stage.task)
    model = check_model(stage.model, source.info, sample_rows(source), autocast_for, task)
    if stage.activation_checkpointing is not None:  # the model lists blocks, at least `every` of them
        try:
            checkpoint_blocks(model, stage.activation_checkpointing.every)
        except UserError as error:
            raise UserError(f"stages.{stage.name}.{error}") from None
    layout = source.columns(extra=False)
    check_named_inputs(model, stage.model.name, stage.data.inputs, [name.removeprefix(INPUT_PREFIX) for name in
                                                                    layout.input_columns], stage.parallel.strategy)
    if dtype is not None and fp32_layers(model):
        layers = ", ".join(f"{name} ({kind})" for name, kind in fp32_layers(model).items())
        print(f"[{stage.name}] note: under {policy} these layers compute in FP32 on CPU: {layers}", flush=True)
    if policy == "fp32":  # nothing to compare: no time spent
        return PrecisionChoice(policy, policy, None)
    rows = sample_rows(source, stage.data_layout.rows_per_read)  # one worker's batch
    return check_precision(stage, source.info, rows, task, echo=lambda line: print(line, flush=True))


def check_gpus(recipe: Recipe, cluster_resources: dict[str, float]) -> None:
    """A stage asking for more GPUs per Ray Train run than the cluster has would wait for ever."""
    available = cluster_resources.get("GPU", 0.0)
    for stage in recipe.stages:
        needed = stage.scaling.gpus_per_worker * max(stage.scaling.num_workers, 1)
        if needed > available:
            raise UserError(
                f"stages.{stage.name}.scaling: asks for {needed:g} GPUs ({stage.scaling.num_workers} workers x "
                f"{stage.scaling.gpus_per_worker:g}) but the cluster has {available:g}: set scaling.use_gpu: false, "
                "lower scaling.num_workers or join a cluster with GPUs (--address)")


def cpus_needed(stage: StageConfig) -> float:
    concurrent_runs = stage.tune.max_concurrent_trials if stage.tune else 1
    return concurrent_runs * max(stage.scaling.num_workers, 1) * stage.scaling.resources_per_worker.get("CPU", 1.0)


def _where(stage: StageConfig) -> str:
    num_workers = stage.scaling.num_workers
    workers = f"{num_workers} worker{'s' * (num_workers > 1)}"
    if stage.tune is None:
        return f"on {workers}" if num_workers else "on the driver (local mode)"
    trials = f"in each of {stage.tune.num_trials} Tune trials"
    return f"on {workers} {trials}" if num_workers else f"{trials}, each in its own process (local mode)"


def write_summary(summary: dict[str, Any], out_dir: Path) -> Path:
    """Write ``summary.json`` atomically: readers see the old or the new file, never half."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SUMMARY_FILE
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".summary.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(summary, handle, indent=2)
    os.replace(tmp, path)
    return path
