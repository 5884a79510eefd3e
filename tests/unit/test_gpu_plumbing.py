"""The GPU plumbing without a GPU: recipe keys, the cluster check, imports without Ray or
pydantic (what the GPU machine lacks), and the GPU check script and tier on a CPU machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rayeffi.cli import main
from rayeffi.errors import UserError
from rayeffi.recipe import load_recipe
from rayeffi.recipe.sections import ScalingConfig
from rayeffi.driver.preflight import check_gpus

ROOT = Path(__file__).resolve().parents[2]
BLOCKER = """
import sys

class _NoRayNoPydantic:  # the GPU machine has neither
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "pydantic"):
            raise ImportError(f"{name} is not installed here")
        return None

sys.meta_path.insert(0, _NoRayNoPydantic())
"""
GPU_SIDE_MODULES = [
    "rayeffi.worker.step", "rayeffi.worker.build", "rayeffi.parallel", "rayeffi.parallel.pipeline",
    "rayeffi.parallel.halo", "rayeffi.parallel.intra_layer", "rayeffi.techniques", "rayeffi.precision",
    "rayeffi.techniques.distill.losses", "rayeffi.techniques.dsd.sparsity", "rayeffi.bench.precision",
    "rayeffi.bench.precision_gpu", "rayeffi.device",
]


def _without_ray_or_pydantic(tmp_path, *args, **kwargs):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kwargs)


def test_a_gpu_count_implies_use_gpu_and_the_backend_follows():
    assert ScalingConfig(resources_per_worker={"CPU": 1, "GPU": 1}).use_gpu
    assert ScalingConfig(use_gpu=True).gpus_per_worker == 1.0
    assert ScalingConfig(use_gpu=True).process_group_backend == "nccl"
    assert ScalingConfig().process_group_backend == "gloo"
    assert ScalingConfig(use_gpu=True, backend="gloo").process_group_backend == "gloo"


@pytest.mark.parametrize(("raw", "message"), [
    ({"use_gpu": False, "resources_per_worker": {"GPU": 1}}, "scaling.use_gpu is false"),
    ({"backend": "nccl"}, "scaling.backend: nccl needs GPUs"),
])
def test_contradictory_gpu_settings_name_the_key(raw, message):
    with pytest.raises(ValueError, match=message):
        ScalingConfig(**raw)


def test_asking_for_more_gpus_than_the_cluster_has_names_both_counts(tmp_path):
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text("scaling: {num_workers: 2, use_gpu: true}\nstages: [{name: train, kind: train, epochs: 1}]\n")
    recipe = load_recipe(recipe_path)
    with pytest.raises(UserError, match=r"asks for 2 GPUs \(2 workers x 1\) but the cluster has 0"):
        check_gpus(recipe, {"CPU": 4.0})
    check_gpus(recipe, {"CPU": 4.0, "GPU": 2.0})


def test_the_gpu_side_imports_without_ray_or_pydantic(tmp_path):
    code = f"import sys; [__import__(m) for m in {GPU_SIDE_MODULES!r}]; " \
           "assert not {'ray', 'pydantic'} & set(sys.modules), sorted(sys.modules)"
    result = _without_ray_or_pydantic(tmp_path, sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_gpu_tier_collects_and_skips_with_the_reason(tmp_path):
    result = _without_ray_or_pydantic(tmp_path, sys.executable, "-m", "pytest", "tests/gpu", "-q", "-rs",
                                      "-p", "no:cacheprovider")
    assert result.returncode == 0, result.stdout[-2000:]
    assert "no CUDA device" in result.stdout and " skipped" in result.stdout and "passed" not in result.stdout


def test_the_gpu_check_script_exits_with_a_message_without_cuda(tmp_path):
    result = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable})
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to check; run it on a GPU machine"]


def test_bench_precision_on_cuda_without_cuda_is_one_error_line(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["bench", "precision", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: bench precision --device cuda: no CUDA device")
