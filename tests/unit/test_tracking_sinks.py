"""Experiment tracking without Ray: metric selection, TensorBoard files, MLflow runs, bad settings."""

from __future__ import annotations

import math

import pytest
import ray

from rayeffi.cli import main
from rayeffi.recipe import validate_recipe
from rayeffi.tracking import Tracker, flatten_config, scalar_metrics
from rayeffi.tracking.tensorboard import LOSS_SCALE_BY_STEP, TensorBoardSink

GOOD = "stages: [{name: train, kind: train, epochs: 1}]\n"


def test_scalar_metrics_keeps_every_finite_number_and_flattens_histograms():
    message = {"epoch": 3, "val_loss": 0.5, "skipped_steps": 2, "dsd_phase": "sparse", "kd_loss": 1.25,
               "staleness_histogram": {"0": 140, "1": 21}, "loss_scale_history": [[0, 65536.0]],
               "grad_underflow_fp16": math.nan, "flag": True}
    assert scalar_metrics(message) == {"val_loss": 0.5, "skipped_steps": 2.0, "kd_loss": 1.25,
                                       "staleness_histogram/0": 140.0, "staleness_histogram/1": 21.0}


def test_flatten_config_uses_dotted_keys():
    assert flatten_config({"a": {"b": 1, "c": [1, 2]}, "d": [{"e": None}]}) == {"a.b": "1", "a.c": "[1, 2]",
                                                                             "d.0.e": "None"}


def _scalars(logdir, tag):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    accumulator = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def test_tensorboard_sink_writes_one_directory_per_stage_and_trial(tmp_path):
    sink = TensorBoardSink(tmp_path)
    sink.log_epoch("train", {"epoch": 1, "val_accuracy": 0.5, "loss_scale_history": [[0, 4.0], [7, 2.0]]})
    sink.log_epoch("train", {"epoch": 2, "val_accuracy": 0.75})
    sink.log_epoch("tuned/trial_1", {"epoch": 1, "val_accuracy": 0.25})
    sink.close("complete")
    assert _scalars(tmp_path / "train", "val_accuracy") == [(1, 0.5), (2, 0.75)]
    assert _scalars(tmp_path / "train", LOSS_SCALE_BY_STEP) == [(0, 4.0), (7, 2.0)]
    assert _scalars(tmp_path / "tuned" / "trial_1", "val_accuracy") == [(1, 0.25)]


class _Broken:
    name = "broken"

    def log_epoch(self, key, message):
        raise ConnectionError("server went away\nmore detail")

    def ids(self):
        return {}

    def close(self, status):
        raise AssertionError("a dropped tracker is not called again")


class _Recording:
    name = "recording"

    def __init__(self):
        self.epochs = []

    def log_epoch(self, key, message):
        self.epochs.append((key, message["epoch"]))

    def ids(self):
        return {}

    def close(self, status):
        pass


def test_a_failing_tracker_warns_once_and_the_others_go_on():
    lines, recording = [], _Recording()
    tracker = Tracker([_Broken(), recording], echo=lines.append)
    for epoch in (1, 2):
        tracker.log_epoch("train", {"epoch": epoch})
    tracker.close("complete")
    assert recording.epochs == [("train", 1), ("train", 2)]
    assert len(lines) == 1 and lines[0].startswith("warning: broken tracking failed (ConnectionError: server went away)")


def _mlflow_recipe(uri, **stage):
    return validate_recipe({"name": "tiny", "stages": [{"name": "train", "kind": "train", "epochs": 2, **stage}],
                            "tracking": {"mlflow": {"tracking_uri": uri, "experiment": "unit"}}})


def test_mlflow_sink_nests_runs_and_resume_continues_the_same_runs(tmp_path):
    pytest.importorskip("mlflow")
    from rayeffi.tracking.mlflow_sink import MlflowSink

    recipe = _mlflow_recipe(f"file:{tmp_path / 'mlruns'}")
    stage = recipe.stages[0]
    # a DSD per-layer pattern such as "layers.5.*" is not a valid MLflow key as it is
    raw = {**recipe.model_dump(mode="json"), "patterns": {"layers.5.*": 0.3}}
    first = MlflowSink(recipe.tracking.mlflow, raw)
    first.stage_started(stage)
    first.log_epoch("train", {"epoch": 1, "val_accuracy": 0.5})
    ids = first.ids()  # what summary.json keeps; the driver dies here
    second = MlflowSink(recipe.tracking.mlflow, raw, previous=ids)
    second.stage_started(stage)
    second.log_epoch("train", {"epoch": 2, "val_accuracy": 0.75})
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"weights")
    second.stage_done({"name": "train", "checkpoint": str(checkpoint)})
    second.close("complete")

    client = second.client
    assert second.ids() == ids
    parent, child = client.get_run(ids["run_id"]), client.get_run(ids["stages"]["train"])
    assert parent.data.params["stages.train.epochs"] == "2" and parent.info.status == "FINISHED"
    assert parent.data.params["patterns.layers.5._"] == "0.3"
    assert child.data.tags["mlflow.parentRunId"] == ids["run_id"] and child.info.status == "FINISHED"
    assert child.data.params["optimizer.lr"] == str(stage.optimizer.lr)
    history = client.get_metric_history(child.info.run_id, "val_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.75)]
    assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["checkpoint.pt"]


UNWRITABLE = "/etc/hostname/cannot-be-a-directory"  # under a regular file: fails even for root

BAD_SETTINGS = {
    "unreachable tracking uri": ("--set", "tracking.mlflow={tracking_uri: 'http://127.0.0.1:9', experiment: x}",
                                 "no MLflow server answers at http://127.0.0.1:9"),
    "empty experiment name": ("--set", "tracking.mlflow={tracking_uri: 'file:/tmp/x', experiment: ''}",
                              "tracking.mlflow.experiment"),
    "padded experiment name": ("--set", "tracking.mlflow={tracking_uri: 'file:/tmp/x', experiment: ' x'}",
                               "tracking.mlflow.experiment"),
    "unknown uri scheme": ("--set", "tracking.mlflow={tracking_uri: 'ftp://host/x'}", "unknown scheme 'ftp'"),
    "unwritable logdir": ("--set", f"tracking.tensorboard={{logdir: {UNWRITABLE}}}",
                          "tracking.tensorboard.logdir: cannot write event files"),
    "unwritable file store": ("--set", f"tracking.mlflow={{tracking_uri: 'file:{UNWRITABLE}'}}",
                              "cannot write the MLflow file store"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_tracking_settings_exit_2_with_one_line_before_ray(case, tmp_path, capsys):
    flag, value, expected = BAD_SETTINGS[case]
    if "tracking.mlflow" in value:
        pytest.importorskip("mlflow")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(GOOD)
    code = main(["run", str(recipe), "--out", str(tmp_path / "out"), flag, value])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert expected in lines[0]
    assert not (tmp_path / "out" / "summary.json").exists() and not ray.is_initialized()


def test_mlflow_sink_puts_tune_trials_under_their_stage(tmp_path):
    pytest.importorskip("mlflow")
    from rayeffi.tracking.mlflow_sink import MlflowSink

    recipe = _mlflow_recipe(f"file:{tmp_path / 'mlruns'}")
    sink = MlflowSink(recipe.tracking.mlflow, recipe.model_dump(mode="json"))
    sink.stage_started(recipe.stages[0])
    for trial, accuracy in (("t1", 0.5), ("t2", 0.25)):
        sink.log_epoch(f"train/{trial}", {"epoch": 1, "val_accuracy": accuracy})
    sink.stage_done({"name": "train", "best_trial": "t1", "metrics": {"epoch": 1, "val_accuracy": 0.5},
                     "trials": [{"trial_id": "t1", "config": {"optimizer.lr": 0.2}, "status": "done"},
                                {"trial_id": "t2", "config": {"optimizer.lr": 9.0}, "status": "error"},
                                {"trial_id": "t3", "config": {}, "status": "error"}]})  # t3: no epoch, no run
    sink.close("complete")
    ids, client = sink.ids(), sink.client
    stage = client.get_run(ids["stages"]["train"])
    assert stage.data.tags["rayeffi.best_trial"] == "t1" and stage.data.metrics["val_accuracy"] == 0.5
    assert sorted(ids["trials"]) == ["train/t1", "train/t2"]
    best, failed = (client.get_run(ids["trials"][f"train/{trial}"]) for trial in ("t1", "t2"))
    assert best.data.tags["mlflow.parentRunId"] == stage.info.run_id and best.data.tags["rayeffi.best"] == "true"
    assert best.data.params["optimizer.lr"] == "0.2" and best.info.status == "FINISHED"
    assert failed.info.status == "FAILED" and failed.data.metrics["val_accuracy"] == 0.25


def test_every_nth_steps_scalars_reach_tensorboard_beside_the_epochs(tmp_path):
    """``log_every_steps: 2``: the training loss, learning rate and pre-clip gradient norm of steps
    2, 4, 6, 8 of the stage (4 steps an epoch, 2 epochs; a local-mode run), as ``step/NAME``."""
    from rayeffi.driver.run import run_recipe
    from rayeffi.recipe import validate_recipe

    recipe = validate_recipe({
        "data": {"dataset": "digits", "batch_size": 64, "max_samples": 256, "max_val_samples": 64},
        "optimizer": {"name": "sgd", "lr": 0.1, "max_grad_norm": 1.0,
                      "schedule": {"name": "linear", "warmup_steps": 3}},
        "scaling": {"num_workers": 0},
        "stages": [{"name": "train", "kind": "train", "epochs": 2, "log_every_steps": 2}],
    })
    summary = run_recipe(recipe, tmp_path / "run", echo=lambda line: None)
    logdir = tmp_path / "run" / "tensorboard" / "train"
    losses = _scalars(logdir, "step/train_loss")
    assert [step for step, _ in losses] == [2, 4, 6, 8] and all(math.isfinite(loss) for _, loss in losses)
    assert [step for step, _ in _scalars(logdir, "step/grad_norm")] == [2, 4, 6, 8]
    learning_rates = [lr for _, lr in _scalars(logdir, "step/lr")]
    assert len(set(learning_rates)) == 4  # the per-step schedule shows step by step
    assert [epoch for epoch, _ in _scalars(logdir, "train_loss")] == [1, 2]  # the epoch points stay
    assert len(summary["stages"][0]["history"]) == 2  # and the history holds epochs only
