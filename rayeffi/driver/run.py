"""The driver: a validated recipe -> its stages, in order -> ``summary.json``.

Everything that can be checked without Ray (data files, checkpoint paths) is checked
before Ray starts, so a bad input costs no cluster time and leaves nothing behind. A recipe
whose stages all run in process (``stages/local_run.py: needs_ray``: local mode, no Tune, no
parameter server) starts no Ray and never imports it; one that has a stage needing Ray starts
it at the start, and its local-mode stages still run in process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from rayeffi.data.sources import DataSource
from rayeffi.task import headline_metrics
from rayeffi.errors import UserError
from rayeffi.health import HealthStop, TrainingDiverged, check_final
from rayeffi.recipe.models import Recipe, StageConfig
from rayeffi.driver.preflight import check_gpus, cpus_needed, preflight
from rayeffi.driver.resume import PROGRESS_FILE, plan_resume
from rayeffi.driver.run_dir import SUMMARY_FILE, claim_run_dir, environment, parameter_counts
from rayeffi.stages import Artifact, StageContext, run_stage
from rayeffi.stages.live import LiveProgress
from rayeffi.stages.local_run import needs_ray
from rayeffi.stages.progress import Progress
from rayeffi.stages.ray_session import start_ray
from rayeffi.driver.storage import resolve_storage
from rayeffi.tracking import open_tracker
from rayeffi.driver.precision_check import PrecisionChoice, with_policy


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
    from rayeffi.evaluate import describe, score

    if entry.get("best_config"):  # a tuned stage: the best trial's model keys
        from rayeffi.stages.tune import stage_variant

        stage = stage_variant(stage, entry["best_config"])
    test = score(stage, source.info, entry["checkpoint"], stage.data.test_path, out_dir / "data" / "test",
                 f"stages.{stage.name}.data.test_path")
    test = {"stage": stage.name, **test}
    echo(f"[test] {describe(test)}")
    return test


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
