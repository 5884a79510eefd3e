"""fp16 loss scaling through a real 2-worker Ray Train stage: telemetry and scaler checkpoints."""

from __future__ import annotations

import pytest

from rayeffi.data.sources import resolve_source
from rayeffi.recipe import validate_recipe
from rayeffi.driver.run import run_recipe
from rayeffi.stages import StageContext
from rayeffi.stages import run_stage
from rayeffi.checkpoint import load_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]

TELEMETRY = {"loss_scale", "skipped_steps", "grad_underflow_fp16", "loss_scale_history"}


def _recipe(epochs, num_workers):
    return validate_recipe({
        "seed": 0,
        "data": {"max_samples": 256, "batch_size": 64},
        "model": {"hidden_sizes": [32]},
        "optimizer": {"lr": 0.1, "momentum": 0.9},
        "scaling": {"num_workers": num_workers, "resources_per_worker": {"CPU": 1}},
        # 2^20 overflows FP16 on the first steps: the run must skip, back off, then grow
        "precision": {"policy": "fp16", "init_scale": 2**20, "growth_interval": 2},
        "stages": [{"name": "train", "kind": "train", "epochs": epochs}],
    })


def test_fp16_stage_reports_telemetry_and_resumes_the_scaler(tmp_path):
    summary = run_recipe(_recipe(epochs=2, num_workers=2), tmp_path / "first")
    stage = summary["stages"][0]
    assert summary["status"] == "complete"
    for row in stage["history"]:
        assert TELEMETRY <= set(row)
    metrics = stage["metrics"]
    assert metrics["skipped_steps"] >= 1  # 2^20 overflowed
    first_epoch = stage["history"][0]["loss_scale_history"]
    # the first steps overflow at 2^20 (which rows come first decides which one): backed off to 2^19
    assert first_epoch[0] == [1, 2.0**20] and first_epoch[1][1] == 2.0**19 and first_epoch[1][0] <= 3
    assert 0.0 <= metrics["grad_underflow_fp16"] < 0.5

    saved = load_checkpoint(stage["checkpoint"])
    assert saved["precision"]["scaler"]["scale"] == metrics["loss_scale"]
    num_steps = saved["precision"]["telemetry"]["num_steps"]
    assert num_steps == 8  # 2 epochs x 128 rows per worker / 32 rows per step

    # resume for a third epoch (local mode): the scaler continues where it stopped
    resumed_stage = _recipe(epochs=3, num_workers=0).stages[0]
    context = StageContext(
        stage_dir=tmp_path / "resumed", storage_path=tmp_path / "resumed-ray",
        source=resolve_source(resumed_stage.data, resumed_stage.seed, tmp_path), previous=None,
        resume_checkpoint=stage["checkpoint"],
    )
    resumed = run_stage(resumed_stage, context)
    third = load_checkpoint(resumed.artifact.checkpoint)
    history = third["metrics"]["loss_scale_history"]
    assert third["epoch"] == 3
    assert history[0] == [num_steps + 1, metrics["loss_scale"]]  # not 2^20 again
    assert third["metrics"]["skipped_steps"] >= metrics["skipped_steps"]
    assert third["precision"]["telemetry"]["num_steps"] == num_steps + 4  # one process: 256 rows / 64
