"""Atomic checkpoints loadable with weights_only, and the learning-rate schedules (no Ray)."""

from __future__ import annotations

import math

import pytest
import torch

from rayeffi.errors import UserError
from rayeffi.recipe import OptimizerConfig
from rayeffi.checkpoint import load_checkpoint, rng_state, save_atomic, set_rng_state
from rayeffi.worker.optim import build_optimizer, build_scheduler, lr_factor


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(OptimizerConfig(lr=0.1, momentum=0.9), model)
    scheduler = build_scheduler(OptimizerConfig(schedule={"name": "cosine"}), optimizer, 5)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = {"format": 1, "epoch": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": [rng_state()], "metrics": {"val_accuracy": 0.5}}
    path = save_atomic(state, tmp_path / "ckpt.pt")
    loaded = torch.load(path, weights_only=True)  # the contract: plain torch.load works
    torch.testing.assert_close(loaded["model"]["weight"], model.weight)
    assert loaded["optimizer"]["state"][0]["momentum_buffer"].shape == (2, 3)
    assert loaded["scheduler"]["last_epoch"] == 1
    assert load_checkpoint(tmp_path / "ckpt.pt")["epoch"] == 1


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = save_atomic({"model": {"w": torch.ones(2)}}, tmp_path / "c.pt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full, say")

    with pytest.raises(RuntimeError):
        save_atomic({"model": {"w": torch.zeros(2)}, "bad": Unpicklable()}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_rng_state_restores_the_same_draws():
    state = rng_state()
    first = torch.rand(3)
    set_rng_state(state)
    torch.testing.assert_close(torch.rand(3), first)


def test_bad_checkpoint_files_are_user_errors(tmp_path):
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(UserError, match="is not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="no 'model' entry"):
        load_checkpoint(tmp_path / "other.pt")


def test_schedules():
    cosine = OptimizerConfig(schedule={"name": "cosine", "warmup_epochs": 2})
    assert lr_factor(cosine, 0, 10) == pytest.approx(0.1)
    assert lr_factor(cosine, 1, 10) == pytest.approx(0.55)
    assert lr_factor(cosine, 2, 10) == pytest.approx(1.0)
    assert lr_factor(cosine, 6, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    step = OptimizerConfig(schedule={"name": "step", "step_size": 3, "gamma": 0.5})
    assert [lr_factor(step, e, 10) for e in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]
    assert lr_factor(OptimizerConfig(), 7, 10) == 1.0


def test_adam_rejects_sgd_options():
    with pytest.raises(ValueError, match="SGD options"):
        OptimizerConfig(name="adam", momentum=0.9)
