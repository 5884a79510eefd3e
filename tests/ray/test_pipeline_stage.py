"""Pipeline-model parallelism through real Ray Train runs (2 workers on gloo).

The example trains the built-in CNN cut into 2 stages to the quickstart's accuracy
floor, its checkpoint assembles into the plain CNN, and a pipelined run matches a
single-process (local mode) run of the same recipe step for step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from rayeffi.data import builtin_digits_paths
from rayeffi.models import ConvNet
from rayeffi.recipe import load_recipe, validate_recipe
from rayeffi.run import run_recipe

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipeline.yaml"
QUICKSTART_FLOOR = 0.95


def test_pipeline_example_reaches_the_quickstart_floor_and_assembles(tmp_path):
    summary = run_recipe(load_recipe(EXAMPLE), tmp_path)
    stage = summary["stages"][0]
    assert stage["num_workers"] == 2
    assert stage["metrics"]["val_accuracy"] >= QUICKSTART_FLOOR

    state = torch.load(stage["checkpoint"], weights_only=True)
    assert len(state["pipeline_stages"]) == 2  # each stage's own optimizer state
    model = ConvNet((1, 8, 8), 10, (16, 32))
    model.load_state_dict(state["model"])  # strict: the stages assemble into the whole CNN
    val = pq.read_table(builtin_digits_paths()[1])
    inputs = torch.tensor(np.stack(val["features"].to_numpy(zero_copy_only=False)), dtype=torch.float32)
    with torch.no_grad():
        accuracy = (model(inputs).argmax(1) == torch.tensor(val["label"].to_numpy())).float().mean().item()
    assert accuracy == pytest.approx(stage["metrics"]["val_accuracy"], abs=1e-6)


def _recipe(num_workers: int, parallel: dict, cpus_per_worker: float = 1.0) -> dict:
    return validate_recipe({
        "seed": 0,
        "data": {"dataset": "digits", "batch_size": 64, "max_samples": 512},  # 8 whole batches per epoch
        "model": {"name": "mlp", "hidden_sizes": [32, 32]},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "scaling": {"num_workers": num_workers, "resources_per_worker": {"CPU": cpus_per_worker}},
        "parallel": parallel,
        "stages": [{"name": "train", "kind": "train", "epochs": 2}],
    })


@pytest.mark.parametrize("num_workers", [2, 4], ids=["2-stages", "2-pipelines-x-2-stages"])
def test_pipelined_run_matches_local_mode(tmp_path, num_workers):
    parallel = {"strategy": "pipeline", "num_stages": 2, "num_microbatches": 4, "schedule": "gpipe"}
    pipelined = run_recipe(_recipe(num_workers, parallel, cpus_per_worker=2 / num_workers), tmp_path / "pipeline")
    local = run_recipe(_recipe(0, {"strategy": "data_parallel"}), tmp_path / "local")
    ours, theirs = (torch.load(run["stages"][0]["checkpoint"], weights_only=True) for run in (pipelined, local))
    assert ours["model"].keys() == theirs["model"].keys()
    for name in theirs["model"]:
        torch.testing.assert_close(ours["model"][name], theirs["model"][name], rtol=0, atol=1e-5)
    for a, b in zip(pipelined["stages"][0]["history"], local["stages"][0]["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-9)
