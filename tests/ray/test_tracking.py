"""Tracking through real runs: TensorBoard event files and MLflow runs written from the driver.

Read back with each tool's own reader: TensorBoard's ``EventAccumulator`` and
``MlflowClient``, against a file store and against a real ``mlflow server``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from rayeffi.recipe import validate_recipe
from rayeffi.run import run_recipe

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
mlflow = pytest.importorskip("mlflow")

SERVER_START_S, SERVER_STOP_S = 120, 15


def _recipe(root, tracking, stages, num_workers=0):
    return validate_recipe({
        "name": "tracked",
        "data": {"dataset": "parquet", "path": str(root / "train.parquet"), "val_path": str(root / "val.parquet"),
                 "batch_size": 64, "num_classes": 10},
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "scaling": {"num_workers": num_workers},
        "stages": stages,
        "tracking": tracking,
    })


def _scalars(logdir, tag):
    accumulator = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    return {event.step: event.value for event in accumulator.Scalars(tag)}


def _series(history, key):
    return {row["epoch"]: pytest.approx(row[key], rel=1e-6) for row in history}


def test_every_stage_writes_tensorboard_events_and_mlflow_runs(small_digits, tmp_path):
    store = tmp_path / "mlruns"
    recipe = _recipe(small_digits, {"mlflow": {"tracking_uri": f"file:{store}", "experiment": "tracked"}}, [
        {"name": "train", "kind": "train", "epochs": 2},
        {"name": "finetune", "kind": "train", "epochs": 1, "init_from": "previous", "optimizer": {"lr": 0.01}},
    ])
    summary = run_recipe(recipe, tmp_path / "out", echo=lambda line: None)
    ids = summary["tracking"]["mlflow"]
    client = mlflow.MlflowClient(store.as_uri())
    parent = client.get_run(ids["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["stages.finetune.optimizer.lr"] == "0.01"
    for stage in summary["stages"]:
        logdir = tmp_path / "out" / "tensorboard" / stage["name"]
        for key in ("val_accuracy", "train_loss", "val_loss", "samples_per_s", "lr"):
            assert _scalars(logdir, key) == _series(stage["history"], key), key
        run = client.get_run(ids["stages"][stage["name"]])
        assert run.data.tags["mlflow.parentRunId"] == ids["run_id"] and run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert {m.step: m.value for m in history} == _series(stage["history"], "val_accuracy")
        assert [artifact.path for artifact in client.list_artifacts(run.info.run_id)] == ["checkpoint.pt"]
    _resume_continues_the_same_runs(recipe, tmp_path / "out", client, ids)


def _resume_continues_the_same_runs(recipe, out, client, ids):
    # the driver died during the second stage: summary.json as it was written when that stage began
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary.update(status="running", stages=summary["stages"][:1])
    summary.pop("wall_s")
    summary_path.write_text(json.dumps(summary))
    resumed = run_recipe(recipe, out, echo=lambda line: None, resume=True)
    assert resumed["tracking"]["mlflow"] == ids
    finetune = client.get_run(ids["stages"]["finetune"])
    assert finetune.info.status == "FINISHED" and client.get_run(ids["run_id"]).info.status == "FINISHED"
    # the interrupted stage ran again (local mode: from its start) into the same run
    assert [m.step for m in client.get_metric_history(finetune.info.run_id, "val_accuracy")] == [1, 1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1, in its own process group, stopped by its PID."""
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    # MLflow 3 refuses a file store unless this opt-out is set (a database needs migrations: slower)
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", (tmp_path / "server-store").as_uri(),
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(uri, server, tmp_path / "server.log")
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its group: uvicorn and the job runner too
        try:
            server.wait(timeout=SERVER_STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=SERVER_STOP_S)
        log.close()


def _wait_until_healthy(uri, server, log_path):
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer within {SERVER_START_S} s: {log_path.read_text()[-2000:]}")


def test_tune_trials_are_children_of_their_stage_on_an_mlflow_server(small_digits, tmp_path, mlflow_server):
    recipe = _recipe(small_digits, {"mlflow": {"tracking_uri": mlflow_server, "experiment": "tuned"}}, [
        {"name": "search", "kind": "train", "epochs": 1,
         "tune": {"search_space": {"optimizer.lr": {"grid": [0.01, 0.2]}}, "num_samples": 1,
                  "max_concurrent_trials": 2}},
    ], num_workers=1)
    summary = run_recipe(recipe, tmp_path / "out", echo=lambda line: None)
    (stage,) = summary["stages"]
    ids = summary["tracking"]["mlflow"]
    client = mlflow.MlflowClient(mlflow_server)
    stage_run = ids["stages"]["search"]
    assert client.get_run(stage_run).data.tags["rayeffi.best_trial"] == stage["best_trial"]
    assert client.get_run(stage_run).data.metrics["val_accuracy"] == pytest.approx(stage["metrics"]["val_accuracy"])
    assert [a.path for a in client.list_artifacts(stage_run)] == ["checkpoint.pt"]
    for trial in stage["trials"]:
        key = f"search/{trial['trial_id']}"
        run = client.get_run(ids["trials"][key])
        assert run.data.tags["mlflow.parentRunId"] == stage_run and run.info.status == "FINISHED"
        assert float(run.data.params["optimizer.lr"]) == trial["config"]["optimizer.lr"]
        assert run.data.metrics["val_accuracy"] == pytest.approx(trial["metrics"]["val_accuracy"])
        events = _scalars(tmp_path / "out" / "tensorboard" / "search" / trial["trial_id"], "val_accuracy")
        assert events == {1: pytest.approx(trial["metrics"]["val_accuracy"], rel=1e-6)}
