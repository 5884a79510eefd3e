"""MLflow runs on the driver: a parent run per recipe run, a child per stage, trials below their stage.

Everything goes through one ``MlflowClient`` with explicit run ids (MLflow's fluent
``mlflow.start_run`` keeps the active run per thread, and epochs arrive on the
progress thread while stages start on the main one). The run ids are kept in
``summary.json`` under ``tracking.mlflow`` so ``--resume`` logs into the same runs.
"""

from __future__ import annotations

import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rayeffi.errors import UserError
from rayeffi.recipe.tracking import MlflowConfig
from rayeffi.tracking.metrics import flatten_config, loss_scale_points, scalar_metrics, step_scalars

PROBE_TIMEOUT_S = 5.0
MAX_PARAM_LENGTH = 6000  # MLflow rejects longer parameter values
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000  # MLflow's log_batch limits
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests child runs by
UNSAFE_KEY_CHARACTERS = re.compile(r"[^/\w.\- ]")
"""MLflow accepts only these in parameter and metric names (``layer_sparsity: {"layers.5.*": 0.3}`` has a ``*``)."""
END_STATUS = {"complete": "FINISHED", "running": "FAILED"}
"""summary.json's status at close -> the MLflow run status (a run still "running" at close has failed)."""


def connect(config: MlflowConfig):
    """A client and the experiment id, or a :class:`UserError` naming the key (before Ray starts)."""
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise UserError(
            "tracking.mlflow: the mlflow client is not installed: pip install 'rayeffi[mlflow]' "
            "(or remove tracking.mlflow from the recipe)"
        ) from None
    uri = _client_uri(config.tracking_uri)
    try:
        client = MlflowClient(tracking_uri=uri)
        return client, _experiment_id(client, config.experiment)
    except MlflowException as exc:
        first_line = str(exc.message).strip().splitlines()[0]
        raise UserError(f"tracking.mlflow ({config.tracking_uri}, experiment {config.experiment!r}): {first_line}") from None


def _client_uri(uri: str) -> str:
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else "file"
    if scheme in ("http", "https"):
        _probe_server(uri)
        # MLflow retries an unanswered request for minutes by default; a server that goes
        # away mid-run should cost one warning, not a stalled progress thread (a user's
        # own settings win)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    if scheme == "file":
        # MLflow 3 refuses its file store unless this opt-out is set; the recipe names a
        # file store explicitly, so it is what the user asked for
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        path = Path(uri.removeprefix("file://") if uri.startswith("file://") else uri.removeprefix("file:"))
        _check_writable(path, uri)
        return path.absolute().as_uri()
    return uri


def _probe_server(uri: str) -> None:
    """One bounded request to the server's health endpoint."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return  # something answers (a proxy, an older server without /health): let MLflow judge it
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(
            f"tracking.mlflow.tracking_uri: no MLflow server answers at {uri} ({reason}): start one "
            "(mlflow server --host 127.0.0.1 --port 5000) or fix the URI"
        ) from None


def _check_writable(path: Path, uri: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".rayeffi-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"tracking.mlflow.tracking_uri: cannot write the MLflow file store {uri} ({exc.strerror or exc}): "
            "give a writable directory"
        ) from None


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name)
    if experiment.lifecycle_stage == "deleted":
        raise UserError(
            f"tracking.mlflow.experiment: {name!r} is a deleted experiment: restore it "
            "(mlflow experiments restore) or choose another name"
        )
    return experiment.experiment_id


class MlflowSink:
    """Logs epochs, parameters and each stage's checkpoint; ``previous`` holds a resumed run's ids."""

    name = "mlflow"

    def __init__(self, config: MlflowConfig, recipe: dict[str, Any], previous: dict[str, Any] | None = None):
        self.config = config
        self.client, self.experiment_id = connect(config)
        previous = previous or {}
        self.runs: dict[str, str] = dict(previous.get("stages", {}))
        """Stage name, or ``STAGE/TRIAL_ID``, -> run id."""
        self.finished: set[str] = set(self.runs.values())
        """Runs already ended (a resumed run's earlier stages stay as they ended)."""
        from mlflow.exceptions import MlflowException

        try:
            self.run_id = self._parent_run(recipe, previous.get("run_id"))
        except MlflowException as exc:
            first_line = str(exc.message).strip().splitlines()[0]
            raise UserError(f"tracking.mlflow ({config.tracking_uri}): cannot open the run: {first_line}") from None

    def _parent_run(self, recipe: dict[str, Any], previous_run_id: str | None) -> str:
        if previous_run_id:  # --resume: the same parent run, running again
            self.client.update_run(previous_run_id, status="RUNNING")
            return previous_run_id
        run = self.client.create_run(self.experiment_id, run_name=self.config.run_name or recipe.get("name"))
        stages = {stage["name"]: stage for stage in recipe["stages"]}  # keyed by name, as --set is
        self._log_params(run.info.run_id, flatten_config({**recipe, "stages": stages}))
        return run.info.run_id

    def stage_started(self, stage) -> None:
        if stage.name in self.runs:  # --resume: the interrupted stage goes on in its run
            self.client.update_run(self.runs[stage.name], status="RUNNING")
            self.finished.discard(self.runs[stage.name])
            return
        self.runs[stage.name] = self._child(self.run_id, stage.name)
        self._log_params(self.runs[stage.name], flatten_config(stage.model_dump(mode="json")))

    def log_epoch(self, key: str, message: dict[str, Any]) -> None:
        if key not in self.runs:  # a Tune trial's first epoch: its run goes under the stage's
            stage = key.split("/", 1)[0]
            self.runs[key] = self._child(self.runs[stage], key.split("/", 1)[1], {"rayeffi.trial_id": key})
        epoch = int(message["epoch"])
        points = [(name, value, epoch) for name, value in scalar_metrics(message).items()]
        points += [("loss_scale_by_step", scale, step) for step, scale in loss_scale_points(message)]
        self._log_metrics(self.runs[key], points)

    def log_step(self, key: str, message: dict[str, Any]) -> None:
        """Per-step scalars as ``step/NAME`` metrics against the stage's optimizer steps."""
        if key not in self.runs:  # a Tune trial's steps before its first epoch: its run comes with that
            return
        step = int(message["step"])
        self._log_metrics(self.runs[key], [(f"step/{name}", value, step)
                                           for name, value in step_scalars(message).items()])

    def stage_done(self, entry: dict[str, Any]) -> None:
        name = entry["name"]
        for trial in entry.get("trials") or []:
            self._trial_done(name, trial, best=trial.get("trial_id") == entry.get("best_trial"))
        run_id = self.runs[name]
        if entry.get("best_trial"):  # a tuned stage's epochs went to its trials: show the best one's here
            self.client.set_tag(run_id, "rayeffi.best_trial", entry["best_trial"])
            metrics = entry.get("metrics") or {}
            self._log_metrics(run_id, [(key, value, int(metrics.get("epoch", 0)))
                                       for key, value in scalar_metrics(metrics).items()])
        checkpoint = Path(entry.get("checkpoint") or "")
        if self.config.log_checkpoints and checkpoint.is_file():
            self.client.log_artifact(run_id, str(checkpoint))
        self._end(run_id, "FINISHED")

    def _trial_done(self, stage: str, trial: dict[str, Any], best: bool) -> None:
        run_id = self.runs.get(f"{stage}/{trial.get('trial_id')}")
        if run_id is None:  # the trial failed before its first epoch
            return
        self._log_params(run_id, flatten_config(trial.get("config") or {}))
        self.client.set_tag(run_id, "rayeffi.best", str(best).lower())
        self._end(run_id, "FAILED" if trial.get("status") == "error" else "FINISHED")

    def ids(self) -> dict[str, Any]:
        stages = {key: run for key, run in self.runs.items() if "/" not in key}
        trials = {key: run for key, run in self.runs.items() if "/" in key}
        return {"tracking_uri": self.config.tracking_uri, "experiment_id": self.experiment_id,
                "run_id": self.run_id, "stages": stages, "trials": trials}

    def close(self, status: str) -> None:
        end = END_STATUS.get(status, "FAILED")
        for run_id in self.runs.values():
            self._end(run_id, end)
        self._end(self.run_id, end)

    def _child(self, parent: str, run_name: str, tags: dict[str, str] | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={PARENT_TAG: parent, **(tags or {})})
        return run.info.run_id

    def _end(self, run_id: str, status: str) -> None:
        if run_id not in self.finished:
            self.client.set_terminated(run_id, status=status)
            self.finished.add(run_id)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        safe = {_safe_key(key): value[:MAX_PARAM_LENGTH] for key, value in params.items()}
        items = [Param(key, value) for key, value in safe.items()]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[start:start + PARAMS_PER_BATCH])

    def _log_metrics(self, run_id: str, points: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        items = [Metric(_safe_key(name), value, now_ms, step) for name, value, step in points]
        for start in range(0, len(items), METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[start:start + METRICS_PER_BATCH])


def _safe_key(key: str) -> str:
    return UNSAFE_KEY_CHARACTERS.sub("_", key)
