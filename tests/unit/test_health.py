"""The driver's health checks on epoch metrics (pure: no tensors, no Ray)."""

from __future__ import annotations

import math

import pytest

from rayeffi.health import LOSS_SCALE_FLOOR, HealthStop, check_final, check_health


def _epoch(epoch, train_loss=0.5, val_loss=0.6, **extra):
    return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": 0.9, **extra}


def test_healthy_runs_pass():
    assert check_health([]) is None
    assert check_health([_epoch(1), _epoch(2, loss_scale=65536.0)]) is None
    assert check_health([_epoch(1, loss_scale=LOSS_SCALE_FLOOR)]) is None  # at the floor is not below it


def test_a_collapsed_loss_scale_stops_with_the_fix():
    reason = check_health([_epoch(1, loss_scale=1024.0), _epoch(2, train_loss=math.nan, loss_scale=2e-16)])
    assert "loss scale collapsed to 2e-16 at epoch 2" in reason and "lower optimizer.lr" in reason


def test_one_non_finite_epoch_is_tolerated_two_are_not():
    assert check_health([_epoch(1), _epoch(2, train_loss=math.inf)]) is None
    reason = check_health([_epoch(1, train_loss=math.nan), _epoch(2, train_loss=math.nan)])
    assert reason.startswith("train_loss is nan for 2 epochs in a row (epoch 2)")
    assert "val_loss is inf" in check_health([_epoch(1, val_loss=math.inf), _epoch(2, val_loss=math.inf)])
    assert check_health([_epoch(1, train_loss=math.nan), _epoch(2), _epoch(3, train_loss=math.nan)]) is None


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_stage_ending_non_finite_has_diverged(value):
    assert "at the end of the stage (epoch 3)" in check_final(_epoch(3, train_loss=value))
    assert check_final(_epoch(3)) is None


def test_the_first_failure_wins_and_is_taken_once():
    assert HealthStop.report("first") is True
    assert HealthStop.report("second") is False
    assert HealthStop.take() == "first"
    assert HealthStop.take() is None


def test_the_progress_thread_stops_the_main_thread(monkeypatch):
    """A diverged stage interrupts the driver's main thread; a diverged Tune trial does not."""
    from rayeffi.stages import progress

    interrupts = []
    monkeypatch.setattr(progress._thread, "interrupt_main", lambda: interrupts.append(1))
    nan = [_epoch(1, train_loss=math.nan), _epoch(2, train_loss=math.nan)]
    progress.stop_if_unhealthy("train/trial_0001", nan)
    assert interrupts == [] and HealthStop.take() is None
    progress.stop_if_unhealthy("train", nan)
    assert interrupts == [1] and HealthStop.take().startswith("stages.train: train_loss is nan")


def test_cli_turns_a_health_stop_into_one_error_line(tmp_path, capsys, monkeypatch):
    from rayeffi.cli import main

    def diverging_run(recipe, out_dir, **kwargs):
        HealthStop.report("stages.train: the fp16 loss scale collapsed to 2e-16 at epoch 3 (floor 0.00390625)")
        raise KeyboardInterrupt
    monkeypatch.setattr("rayeffi.driver.run.run_recipe", diverging_run)
    (tmp_path / "r.yaml").write_text("stages: [{name: train, kind: train, epochs: 3}]\n")
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: stages.train: the fp16 loss scale collapsed to 2e-16 at epoch 3 (floor 0.00390625)"]


def test_cli_rejects_a_run_that_finished_non_finite(tmp_path, capsys, monkeypatch):
    from rayeffi.cli import main

    def finished(recipe, out_dir, **kwargs):
        return {"wall_s": 1.0, "stages": [{"name": "train", "metrics": _epoch(1, train_loss=math.nan)}]}
    monkeypatch.setattr("rayeffi.driver.run.run_recipe", finished)
    (tmp_path / "r.yaml").write_text("stages: [{name: train, kind: train, epochs: 1}]\n")
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: stages.train: train_loss is nan at the end of the stage")
