"""A stage with a tune: block runs as Ray Tune trials: Ray Train runs, or processes in local mode.

One tuned run serves every check (each costs a Ray Train start-up per trial): the best trial
is chosen by its metric and handed on to the next stage; a trial whose loss goes NaN is an
error, never the best, and counted; and every trial is an MLflow child run of its stage on a
real ``mlflow server`` (started here on 127.0.0.1, in its own process group, stopped by PID).
The Ray Train trials try the best and the diverging learning rates; the same search in
local mode (each trial training in its own process) adds a slow one, chooses the best by
its metric, hands it on, and gives each trial the metrics of its 1-worker Ray Train twin.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from helpers.ray_head import free_ports
from helpers.tensorboard_events import scalars
from rayeffi.checkpoint import load_checkpoint
from rayeffi.recipe import validate_recipe
from rayeffi.driver.run import run_recipe

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]

pytest.importorskip("tensorboard")
mlflow = pytest.importorskip("mlflow")

SLOW_LR, GOOD_LR, ABSURD_LR = 0.0005, 0.2, 1.0e6  # barely moves in 2 epochs, learns, diverges
SERVER_START_S, SERVER_STOP_S = 120, 15


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1, in its own process group, stopped by its PID."""
    root = tmp_path_factory.mktemp("mlflow")
    (port,) = free_ports(1)
    log_path = root / "server.log"
    log = log_path.open("w")
    # MLflow 3 refuses a file store unless this opt-out is set (a database needs migrations: slower)
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", (root / "server-store").as_uri(), "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(uri, server, log_path)
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


@pytest.fixture(scope="module")
def tuned_run(mlflow_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned")
    search = {"kind": "train", "epochs": 2,
              "tune": {"search_space": {"optimizer.lr": {"grid": [SLOW_LR, GOOD_LR, ABSURD_LR]}}, "num_samples": 1,
                       "metric": "val_loss", "mode": "min", "max_concurrent_trials": 3}}
    recipe = validate_recipe({
        "data": {"max_samples": 256, "batch_size": 32},
        "scaling": {"num_workers": 1},
        "tracking": {"mlflow": {"tracking_uri": mlflow_server, "experiment": "tuned"}},
        "stages": [
            {"name": "search", **search,  # Ray Train runs: the best and the diverging lr
             "tune": {**search["tune"], "search_space": {"optimizer.lr": {"grid": [GOOD_LR, ABSURD_LR]}}}},
            {"name": "local_search", **search, "scaling": {"num_workers": 0}},
            {"name": "after", "kind": "train", "epochs": 1, "init_from": "previous", "optimizer": {"lr": 1e-12},
             "scaling": {"num_workers": 0}},
        ],
    })
    lines: list[str] = []
    summary = run_recipe(recipe, out, echo=lines.append)
    return out, summary, lines


def test_the_best_trial_is_handed_on(tuned_run):
    _, summary, _ = tuned_run
    _, search, after = summary["stages"]
    trials = {trial["config"]["optimizer.lr"]: trial for trial in search["trials"]}
    assert sorted(trials) == [SLOW_LR, GOOD_LR, ABSURD_LR]
    assert all(trials[lr]["status"] == "done" and trials[lr]["epochs_run"] == 2 for lr in (SLOW_LR, GOOD_LR))
    assert search["best_trial"] == trials[GOOD_LR]["trial_id"] and search["best_config"] == {"optimizer.lr": GOOD_LR}
    assert trials[GOOD_LR]["metrics"]["val_loss"] < trials[SLOW_LR]["metrics"]["val_loss"]
    assert search["metrics"]["val_loss"] == pytest.approx(trials[GOOD_LR]["metrics"]["val_loss"])
    assert len(search["history"]) == 2 and Path(search["checkpoint"]).is_file()
    # the next stage starts from the best trial's weights
    first, second = load_checkpoint(search["checkpoint"]), load_checkpoint(after["checkpoint"])
    for name, value in first["model"].items():
        assert (second["model"][name] - value).abs().max() < 1e-6


@pytest.mark.parametrize("name", ["search", "local_search"])
def test_a_diverging_trial_is_an_error_and_never_the_best(tuned_run, name):
    _, summary, lines = tuned_run
    search = next(stage for stage in summary["stages"] if stage["name"] == name)
    diverged = next(trial for trial in search["trials"] if trial["config"]["optimizer.lr"] == ABSURD_LR)
    assert diverged["status"] == "error" and diverged["error"].startswith("diverged: "), diverged
    assert search["best_trial"] != diverged["trial_id"] and search["diverged_trials"] == 1
    assert math.isfinite(search["metrics"]["val_loss"])
    count = len(search["trials"])
    assert f"[{name}] 1 of {count} trials diverged (non-finite loss): listed as errors, left out of the choice of " \
           "the best" in lines


def test_a_local_mode_trial_trains_as_its_one_worker_train_run(tuned_run):
    _, summary, lines = tuned_run
    search, local, _ = summary["stages"]
    assert local["num_workers"] == 0 and search["num_workers"] == 1
    assert "[local_search] train: 2 epochs in each of 3 Tune trials, each in its own process (local mode)" in lines
    assert "[search] train: 2 epochs on 1 worker in each of 2 Tune trials" in lines
    twins = {trial["config"]["optimizer.lr"]: trial for trial in search["trials"]}
    for trial in local["trials"]:
        twin = twins.get(trial["config"]["optimizer.lr"])
        if twin is None:
            continue
        assert (trial["status"], trial["epochs_run"]) == (twin["status"], twin["epochs_run"])
        assert trial["metrics"] == pytest.approx(twin["metrics"], rel=1e-6, nan_ok=True), trial["config"]
    assert local["best_config"] == search["best_config"]
    ours, theirs = load_checkpoint(local["checkpoint"]), load_checkpoint(search["checkpoint"])  # Tune's copy, Train's
    for name, value in theirs["model"].items():
        torch.testing.assert_close(ours["model"][name], value, rtol=1e-6, atol=1e-7)


def test_trials_are_children_of_their_stage_on_an_mlflow_server(tuned_run, mlflow_server):
    out, summary, _ = tuned_run
    search = summary["stages"][0]  # Ray Train runs as trials
    ids = summary["tracking"]["mlflow"]
    client = mlflow.MlflowClient(mlflow_server)
    stage_run = ids["stages"]["search"]
    assert client.get_run(stage_run).data.tags["rayeffi.best_trial"] == search["best_trial"]
    assert client.get_run(stage_run).data.metrics["val_loss"] == pytest.approx(search["metrics"]["val_loss"])
    assert [a.path for a in client.list_artifacts(stage_run)] == ["checkpoint.pt"]
    for trial in search["trials"]:
        key = f"search/{trial['trial_id']}"
        if trial["status"] == "error":  # a run only if it reported an epoch before it failed
            assert key not in ids["trials"] or client.get_run(ids["trials"][key]).info.status == "FAILED"
            continue
        run = client.get_run(ids["trials"][key])
        assert run.data.tags["mlflow.parentRunId"] == stage_run and run.info.status == "FINISHED"
        assert float(run.data.params["optimizer.lr"]) == trial["config"]["optimizer.lr"]
        assert run.data.metrics["val_loss"] == pytest.approx(trial["metrics"]["val_loss"])
        events = scalars(out / "tensorboard" / "search" / trial["trial_id"], "val_loss")
        assert events[2] == pytest.approx(trial["metrics"]["val_loss"], rel=1e-6)
