"""``rayeffi.prepare`` in a user's own loop: the example on 2 Ray Train workers, and parity
with a recipe's stage (the same techniques through ``rayeffi run``'s worker loop)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray.cloudpickle
import torch

import rayeffi
from rayeffi.checkpoint import load_checkpoint
from rayeffi.models.mlp import MLP
from rayeffi.recipe import Recipe
from rayeffi.driver.run import run_recipe

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_loop.py"


def _example():
    if "own_loop_example" in sys.modules:
        return sys.modules["own_loop_example"]
    spec = importlib.util.spec_from_file_location("own_loop_example", EXAMPLE)
    module = sys.modules["own_loop_example"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ray.cloudpickle.register_pickle_by_value(module)  # the workers cannot import examples/
    return module


def test_the_example_trains_with_bf16_dsd_and_kd_on_two_workers(tmp_path):
    result = _example().main(["--smoke", "--workers", "2"], storage=str(tmp_path))
    metrics = result.metrics
    assert metrics["epoch"] == 3 and metrics["dsd_phase"] == "redense" and metrics["kd_soft_loss"] > 0
    assert metrics["val_accuracy"] > 0.5  # 3 smoke epochs of digits; chance is 0.1
    with result.checkpoint.as_directory() as directory:
        saved = torch.load(Path(directory) / "student.pt", weights_only=True)
    masks = saved["sparse"]["masks"]
    assert set(masks) == {"1.weight", "3.weight"}  # every Linear weight matrix
    for name, mask in masks.items():  # counted in the checkpoint: half of each layer is zero
        weights = saved["sparse"]["model"][name]
        assert (weights[~mask] == 0).all() and abs((weights == 0).float().mean().item() - 0.5) < 0.01
    assert saved["dsd"]["rounds"][1]["measured_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_own_loop_equals_the_recipe_stage(small_digits, tmp_path):
    """The same student, teacher, batches and techniques: a recipe's stage (local mode) and the
    example's loop over ``rayeffi.prepare`` end with the same weights and masks."""
    common = {"seed": 0, "precision": "bf16", "scaling": {"num_workers": 0},
              "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
              "data": {"dataset": "parquet", "path": str(small_digits / "train.parquet"),
                       "val_path": str(small_digits / "val.parquet"), "batch_size": 32, "shuffle": False}}
    dsd = {"name": "dsd", "rounds": [0.5], "dense_epochs": 1, "sparse_epochs": 1, "redense_epochs": 1}
    distill = {"temperature": 4.0, "alpha": 0.7}
    recipe = Recipe.model_validate({"name": "parity", **common, "stages": [
        {"name": "teacher", "kind": "train", "epochs": 1, "model": {"name": "mlp", "hidden_sizes": [64]}},
        {"name": "student", "kind": "train", "model": {"name": "mlp", "hidden_sizes": [16]},
         "techniques": [dsd, {"name": "distill", "teachers": ["teacher"], **distill}]},
    ]})
    summary = run_recipe(recipe, tmp_path / "run", echo=lambda line: None)
    checkpoints = {stage["name"]: load_checkpoint(stage["checkpoint"]) for stage in summary["stages"]}

    teacher = MLP(64, 10, (64,))
    teacher.load_state_dict(checkpoints["teacher"]["model"])
    torch.manual_seed(0)  # the stage's seed, as the recipe builds its model
    student = MLP(64, 10, (16,))
    fx = rayeffi.prepare(student, torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9), precision="bf16",
                         techniques=[dsd, rayeffi.DistillConfig(teachers=[teacher], **distill)])
    tables = {name: pq.read_table(small_digits / f"{name}.parquet").to_pydict() for name in ("train", "val")}

    def batches(name):
        features = torch.tensor(tables[name]["features"], dtype=torch.float32)
        labels = torch.tensor(tables[name]["label"])
        return lambda: ((features[i:i + 32], labels[i:i + 32]) for i in range(0, len(labels), 32))

    with fx:
        metrics = _example().run_epochs(fx, batches("train"), batches("val"), fx.epochs)

    recipe_student = checkpoints["student"]
    for name, value in recipe_student["model"].items():
        torch.testing.assert_close(student.state_dict()[name], value, rtol=0, atol=1e-5, msg=name)
    recipe_sparse = recipe_student["techniques"]["dsd"]["sparse"]
    own_sparse = fx.sparse_state()
    assert own_sparse["masks"].keys() == recipe_sparse["masks"].keys()
    for name, mask in recipe_sparse["masks"].items():
        assert torch.equal(own_sparse["masks"][name], mask), name
    recipe_metrics = summary["stages"][1]["metrics"]
    assert metrics["val_accuracy"] == pytest.approx(recipe_metrics["val_accuracy"], abs=1e-9)
    assert metrics["kd_soft_loss"] == pytest.approx(recipe_metrics["kd_soft_loss"], rel=1e-5)
