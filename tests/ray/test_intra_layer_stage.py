"""The intra_layer strategy through a real Ray Train run: data layout, 2-D mesh, whole checkpoints.

Full-batch steps (every step sees all 256 rows whatever the sharding) make a split run
comparable with one process: each model-parallel group gathers its members' shards
(``IntraLayer.group_batch``), so two 2-worker groups train on 128 rows each, averaged by
DDP over the data-parallel axis.
"""

from __future__ import annotations

import pytest
import torch

from rayeffi.models import ConvNet
from rayeffi.recipe import validate_recipe
from rayeffi.driver.run import run_recipe
from rayeffi.checkpoint import load_checkpoint
from helpers.reference import full_batch_sgd

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]

NUM_ROWS, EPOCHS, LR, MOMENTUM, CHANNELS = 256, 3, 0.1, 0.9, (4, 8)


def _recipe(root, num_workers, parallel):
    return validate_recipe({
        "seed": 0,
        "data": {"dataset": "parquet", "path": str(root / "train.parquet"), "val_path": str(root / "val.parquet"),
                 "batch_size": NUM_ROWS, "shuffle": False, "num_classes": 10, "image_shape": [1, 8, 8]},
        "model": {"name": "cnn", "channels": list(CHANNELS)},
        "optimizer": {"name": "sgd", "lr": LR, "momentum": MOMENTUM},
        "scaling": {"num_workers": num_workers, "resources_per_worker": {"CPU": 0.5}},
        "parallel": {"strategy": "intra_layer", **parallel},
        "stages": [{"name": "train", "kind": "train", "epochs": EPOCHS}],
    })


def _single_process_reference(root):
    return full_batch_sgd(root / "train.parquet", lambda: ConvNet((1, 8, 8), 10, CHANNELS), EPOCHS, LR, MOMENTUM)


def test_two_groups_of_two_match_single_process_training(small_digits, tmp_path):
    # 2 model-parallel groups (channels split, classifier split) x 2 data-parallel replicas;
    # one group of spatial tiles on 2 workers: the intra_layer example (tests/ray/test_examples.py);
    # every split mode's numerics: tests/unit/test_intra_layer_gloo.py
    num_workers, parallel = 4, {"conv": "channels", "fc": "split", "model_parallel_size": 2}
    summary = run_recipe(_recipe(small_digits, num_workers, parallel), tmp_path)
    stage = summary["stages"][0]
    state = load_checkpoint(stage["checkpoint"])
    expected, losses = _single_process_reference(small_digits)
    assert state["model"].keys() == expected.keys()  # the whole, unsplit model
    for name, value in expected.items():
        torch.testing.assert_close(state["model"][name], value, rtol=0, atol=1e-5)
    assert [row["train_loss"] for row in stage["history"]] == pytest.approx(losses, abs=1e-5)
    assert stage["metrics"]["samples_per_s"] > 0 and stage["num_workers"] == num_workers
