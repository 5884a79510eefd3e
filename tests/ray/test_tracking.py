"""Tracking through real runs: TensorBoard event files and MLflow runs written from the driver.

Read back with each tool's own reader: TensorBoard's ``EventAccumulator`` and
``MlflowClient``, against a file store. Tune trials as child runs, against a real
``mlflow server``: tests/ray/test_tune.py (its tuned run serves that check too).
"""

from __future__ import annotations

import json

import pytest

from helpers.tensorboard_events import scalars
from rayeffi.recipe import validate_recipe
from rayeffi.driver.run import run_recipe

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]
pytest.importorskip("tensorboard")
mlflow = pytest.importorskip("mlflow")


def _recipe(root, tracking, stages):
    return validate_recipe({
        "name": "tracked",
        "data": {"dataset": "parquet", "path": str(root / "train.parquet"), "val_path": str(root / "val.parquet"),
                 "batch_size": 64, "num_classes": 10},
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "scaling": {"num_workers": 0},
        "stages": stages,
        "tracking": tracking,
    })


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
            assert scalars(logdir, key) == _series(stage["history"], key), key
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
