"""A Tune trial whose loss goes NaN is an error trial, never the best, and counted (~1 min).

Its own module, so its own private Ray (a test that expects failures keeps them there).
"""

from __future__ import annotations

import math

import pytest

from rayeffi.recipe import validate_recipe
from rayeffi.run import run_recipe

pytestmark = pytest.mark.ray

SANE_LR, ABSURD_LR = 0.05, 1.0e6


@pytest.mark.usefixtures("local_ray")
def test_a_diverging_trial_is_an_error_and_never_the_best(tmp_path):
    recipe = validate_recipe({
        "data": {"max_samples": 256, "batch_size": 32},
        "scaling": {"num_workers": 1},
        "stages": [{"name": "search", "kind": "train", "epochs": 2,
                    "tune": {"search_space": {"optimizer.lr": {"grid": [SANE_LR, ABSURD_LR]}},
                             "num_samples": 1, "metric": "val_loss", "mode": "min",
                             "max_concurrent_trials": 2}}],
    })
    lines = []
    summary = run_recipe(recipe, tmp_path, echo=lines.append)
    (stage,) = summary["stages"]
    trials = {trial["config"]["optimizer.lr"]: trial for trial in stage["trials"]}
    diverged, sane = trials[ABSURD_LR], trials[SANE_LR]
    assert diverged["status"] == "error" and diverged["error"].startswith("diverged: "), diverged
    assert sane["status"] == "done"
    assert stage["best_trial"] == sane["trial_id"] and stage["diverged_trials"] == 1
    assert math.isfinite(stage["metrics"]["val_loss"])
    assert "[search] 1 of 2 trials diverged (non-finite loss): listed as errors, left out of the choice of the best" \
        in lines
