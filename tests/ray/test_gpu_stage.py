"""The recipe-to-ScalingConfig GPU path on a machine without CUDA: a private Ray declaring
two logical GPUs, ``use_gpu: true`` with gloo; and a recipe asking for GPUs a cluster
does not have exits 2 with one ``error:`` line before any worker starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from rayeffi.recipe import validate_recipe
from rayeffi.driver.run import run_recipe
from rayeffi.stages.ray_session import start_ray

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_with_logical_gpus(own_ray):
    assert not ray.is_initialized(), "a previous module leaked its Ray instance"
    start_ray(address=None, num_cpus_needed=3, num_gpus=2)
    yield
    ray.shutdown()


def test_use_gpu_reaches_ray_and_workers_fall_back_to_the_cpu(ray_with_logical_gpus, small_digits, tmp_path):
    recipe = validate_recipe({
        "seed": 0,
        "data": {"dataset": "parquet", "path": str(small_digits / "train.parquet"),
                 "val_path": str(small_digits / "val.parquet"), "batch_size": 64},
        "model": {"hidden_sizes": [32]},
        "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 1}, "use_gpu": True, "backend": "gloo"},
        "stages": [{"name": "train", "kind": "train", "epochs": 1}],
    })
    summary = run_recipe(recipe, tmp_path / "run", echo=lambda line: None)
    stage = summary["stages"][0]
    assert summary["status"] == "complete"
    devices = stage["devices"]
    assert len(devices) == 2
    assert {tuple(d["gpu_ids"]) for d in devices} == {("0",), ("1",)}  # each worker got its own logical GPU
    assert all(d["device"] == "cpu" and "CUDA is not available" in d["note"] for d in devices)


def test_asking_for_gpus_a_cluster_lacks_is_one_error_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "rayeffi", "run", "examples/quickstart.yaml", "--smoke", "--set", "scaling.use_gpu=true",
         "--out", str(tmp_path / "run")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stages.") and "but the cluster has 0" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert time.perf_counter() - start < 60  # Ray's start and stop, no worker ever waits for a GPU
