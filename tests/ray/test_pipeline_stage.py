"""Pipeline-model parallelism through a real Ray Train run (4 workers on gloo): two
data-parallel pipelines of two stages match a single-process (local mode) run of the same
recipe step for step. The example (2 stages of the built-in CNN) runs, assembles and
reaches its floor in tests/ray/test_examples.py.
"""

from __future__ import annotations

import pytest
import torch

from rayeffi.recipe import validate_recipe
from rayeffi.driver.run import run_recipe

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]


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


def test_two_pipelines_of_two_stages_match_local_mode(tmp_path):
    # 4 workers: 2 data-parallel pipelines of 2 stages (a single pipeline on 2 workers is the
    # example's run in test_examples.py; each schedule's numerics: tests/unit/test_pipeline_parity_gloo.py)
    parallel = {"strategy": "pipeline", "num_stages": 2, "num_microbatches": 4, "schedule": "gpipe"}
    pipelined = run_recipe(_recipe(4, parallel, cpus_per_worker=0.5), tmp_path / "pipeline")
    local = run_recipe(_recipe(0, {"strategy": "data_parallel"}), tmp_path / "local")
    ours, theirs = (torch.load(run["stages"][0]["checkpoint"], weights_only=True) for run in (pipelined, local))
    assert ours["model"].keys() == theirs["model"].keys()
    for name in theirs["model"]:
        torch.testing.assert_close(ours["model"][name], theirs["model"][name], rtol=0, atol=1e-5)
    for a, b in zip(pipelined["stages"][0]["history"], local["stages"][0]["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-9)
