"""A finished run's model scored on other data: data.test_path after the last stage, and
rayeffi evaluate DIR --data PATH (local mode: no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rayeffi.cli import main
from rayeffi.data import builtin_digits_paths
from rayeffi.driver.run import run_recipe
from rayeffi.errors import UserError
from rayeffi.evaluate import evaluate_run
from rayeffi.recipe import validate_recipe
from rayeffi.result import load_model


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """Digits, local mode, 2 epochs, with the shipped validation rows as data.test_path."""
    out = tmp_path_factory.mktemp("run")
    test_path = builtin_digits_paths()[1]
    summary = run_recipe(validate_recipe({
        "data": {"dataset": "digits", "batch_size": 64, "test_path": test_path},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "scaling": {"num_workers": 0},
        "stages": [{"name": "train", "kind": "train", "epochs": 2}],
    }), out, echo=lambda line: None)
    return out, summary, test_path


def _accuracy(out, path) -> float:
    """The trained model on every row of ``path``, computed here by hand."""
    model = load_model(out, "train")
    table = pq.read_table(path)
    features = torch.tensor(np.stack(table["features"].to_numpy(zero_copy_only=False)), dtype=torch.float32)
    with torch.no_grad():
        return (model(features).argmax(dim=1) == torch.tensor(table["label"].to_numpy())).float().mean().item()


def test_the_test_split_is_scored_once_after_the_last_stage(finished_run):
    out, summary, test_path = finished_run
    test = summary["test"]
    assert test["stage"] == "train" and test["rows"] == 360
    assert test["metrics"]["test_accuracy"] == pytest.approx(_accuracy(out, test_path), abs=1e-6)
    # the held-out rows are the validation rows here: the same figure the stage's last epoch reported
    assert test["metrics"]["test_accuracy"] == pytest.approx(summary["stages"][0]["metrics"]["val_accuracy"], abs=1e-6)
    assert json.loads((out / "summary.json").read_text())["test"] == test
    stage = summary["stages"][0]
    assert stage["data_columns"] == ["features", "label"] and stage["data_info"]["num_train"] == 1437


def test_evaluate_scores_a_finished_run_on_other_data(finished_run, tmp_path, capsys):
    out, _, _ = finished_run
    table = pq.read_table(builtin_digits_paths()[0]).slice(0, 100)
    pq.write_table(table, tmp_path / "other.parquet")
    result = evaluate_run(out, tmp_path / "other.parquet")
    assert result["rows"] == 100
    assert result["metrics"]["test_accuracy"] == pytest.approx(_accuracy(out, tmp_path / "other.parquet"), abs=1e-6)
    assert main(["evaluate", str(out), "--data", str(tmp_path / "other.parquet"), "--stage", "train"]) == 0
    assert "train on 100 rows" in capsys.readouterr().out


def test_data_that_does_not_fit_is_one_error_line(finished_run, tmp_path, capsys):
    out, _, _ = finished_run
    narrow = pa.table({"features": pa.array([[0.0] * 10] * 8, pa.list_(pa.float32(), 10)),
                       "label": pa.array([0] * 8, pa.int64())})
    pq.write_table(narrow, tmp_path / "narrow.parquet")
    with pytest.raises(UserError, match=r"^--data .*narrow.parquet does not fit the model of stage 'train': "
                                        r"num_features 10 \(trained on 64\)"):
        evaluate_run(out, tmp_path / "narrow.parquet")
    assert main(["evaluate", str(out), "--data", str(tmp_path / "narrow.parquet"), "--stage", "nope"]) == 2
    assert "has no stage 'nope'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--data", str(tmp_path / "narrow.parquet")]) == 2  # not a run
    assert main(["evaluate", str(out), "--data", str(tmp_path / "missing.parquet")]) == 2


def test_a_test_path_that_does_not_fit_fails_before_training(tmp_path, capsys):
    narrow = pa.table({"features": pa.array([[0.0] * 10] * 8, pa.list_(pa.float32(), 10)),
                       "label": pa.array([0] * 8, pa.int64())})
    pq.write_table(narrow, tmp_path / "narrow.parquet")
    (tmp_path / "r.yaml").write_text(f"data: {{dataset: digits, test_path: {tmp_path / 'narrow.parquet'}}}\n"
                                     "scaling: {num_workers: 0}\nstages: [{name: train, kind: train, epochs: 1}]\n")
    assert main(["validate", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: stages.train.data.test_path ") and "num_features 10 (trained on 64)" in err
