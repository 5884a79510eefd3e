"""A stage with a tune: block runs as Ray Tune trials, each one a Ray Train run."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayeffi.recipe import validate_recipe
from rayeffi.run import run_recipe
from rayeffi.checkpoint import load_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]


def test_tuned_train_stage_hands_the_best_trial_on(tmp_path):
    recipe = validate_recipe({
        "data": {"max_samples": 256, "batch_size": 32},
        "model": {"hidden_sizes": [32]},
        "scaling": {"num_workers": 1},
        "stages": [
            {"name": "search", "kind": "train", "epochs": 2,
             "tune": {"search_space": {"optimizer.lr": {"grid": [0.0005, 0.2]}}, "num_samples": 1,
                      "max_concurrent_trials": 2}},
            {"name": "after", "kind": "train", "epochs": 1, "init_from": "previous", "optimizer": {"lr": 1e-12}},
        ],
    })
    summary = run_recipe(recipe, tmp_path)
    search, after = summary["stages"]
    trials = search["trials"]
    assert sorted(t["config"]["optimizer.lr"] for t in trials) == [0.0005, 0.2]
    assert all(t["status"] == "done" and t["epochs_run"] == 2 for t in trials)
    best = max(trials, key=lambda t: t["metrics"]["val_accuracy"])
    assert search["best_trial"] == best["trial_id"]
    assert search["best_config"] == {"optimizer.lr": 0.2}  # lr 0.0005 barely moves in 2 epochs
    assert search["metrics"]["val_accuracy"] == pytest.approx(best["metrics"]["val_accuracy"])
    assert len(search["history"]) == 2
    # the next stage starts from the best trial's weights
    first, second = load_checkpoint(search["checkpoint"]), load_checkpoint(after["checkpoint"])
    for name, value in first["model"].items():
        assert (second["model"][name] - value).abs().max() < 1e-6
    assert Path(search["checkpoint"]).is_file()
