"""Health checks: a non-finite loss stops the stage with one error line; a model at chance warns."""

from __future__ import annotations

import math

import pytest
from ray.train import WorkerGroupError

from rayeffi.errors import UserError
from rayeffi.health import (
    NON_FINITE_STEPS_TOLERATED,
    TrainingDiverged,
    chance_warning,
    loss_is_unhealthy,
    non_finite_loss_error,
)
from rayeffi.stages.base import Artifact, StageResult
from rayeffi.stages.progress import format_epoch_line
from rayeffi.stages.train_run import find_user_error, worker_user_errors


def test_non_finite_loss_stops_unless_loss_scaling_is_skipping():
    assert not loss_is_unhealthy(0, skips_on_overflow=False)
    assert loss_is_unhealthy(1, skips_on_overflow=False)
    assert not loss_is_unhealthy(NON_FINITE_STEPS_TOLERATED, skips_on_overflow=True)
    assert loss_is_unhealthy(NON_FINITE_STEPS_TOLERATED + 1, skips_on_overflow=True)
    message = non_finite_loss_error("train", 3, 17, 5.0, "fp32")
    assert message.startswith("stages.train: the training loss became non-finite at epoch 3, step 17 (lr 5")
    assert "lower optimizer.lr" in message and "\n" not in message


def test_the_worker_error_reaches_the_driver_as_one_line():
    diverged = TrainingDiverged(non_finite_loss_error("train", 1, 2, 1.0, "bf16"))
    wrapped = WorkerGroupError("rank 0 failed", {0: diverged, 1: RuntimeError("gloo connection closed")})
    assert find_user_error(wrapped) is diverged
    assert find_user_error(RuntimeError("a bug")) is None
    with pytest.raises(UserError) as raised, worker_user_errors():  # the driver's side of both execution models
        raise wrapped
    assert str(raised.value) == str(diverged) and raised.value.__cause__ is None
    with pytest.raises(RuntimeError, match="a bug"), worker_user_errors():
        raise RuntimeError("a bug")


def test_chance_warning():
    assert chance_warning(1, 0.1, 5.0, 10) is None  # too early
    warning = chance_warning(3, 0.1, 2.5, 10)
    assert warning and "at chance (0.100) after 3 epochs" in warning and "check optimizer.lr" in warning
    assert chance_warning(3, 0.1, math.log(10) - 0.1, 10) is None  # loss below a uniform guess: learning
    assert chance_warning(3, 0.6, 3.0, 10) is None


def test_warning_in_the_epoch_line_and_the_summary():
    row = {"epoch": 3, "train_loss": 2.4, "val_loss": 2.5, "val_accuracy": 0.1, "samples_per_s": 100.0,
           "kd_soft_loss": 40.0, "kd_ce_loss": 2.3, "warning": chance_warning(3, 0.1, 2.5, 10)}
    line = format_epoch_line("s", row)
    assert "[kd 40.0000, ce 2.3000]" in line and "WARNING: val_accuracy 0.100 is at chance" in line
    result = StageResult("s", "train", Artifact("c.pt", row), [dict(row, epoch=2), row], 1.0)
    assert result.summary()["warnings"] == [row["warning"]]
