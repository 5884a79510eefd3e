"""A Tune trial that crashes mid-training is reported as failed; its sibling runs to the end.

The trials run in local mode (each trains in its own Tune trial process) and stream their
data (``data.in_memory_mb: 0``): Ray Tune over Ray Train runs is tests/ray/test_tune.py's.
The crash is the test model's (``helpers.user_models:crashing``): the shared Ray's workers
import it (tests/ray/conftest.py).
"""

from __future__ import annotations

import pytest

from rayeffi.recipe import validate_recipe
from rayeffi.driver.run import run_recipe
from rayeffi.checkpoint import load_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]

CRASH_AFTER, NEVER = 10, 10_000  # training batches before the model raises


def test_a_crashing_trial_leaves_its_sibling_running(tmp_path):
    recipe = validate_recipe({
        "data": {"max_samples": 256, "batch_size": 32, "in_memory_mb": 0},  # 8 batches per epoch
        "model": {"name": "helpers.user_models:crashing", "kwargs": {"crash_after": NEVER, "sleep_s": 0.05}},
        "scaling": {"num_workers": 0},  # each trial trains in its own process (local mode)
        "stages": [{"name": "search", "kind": "train", "epochs": 3,
                    "tune": {"search_space": {"model.kwargs.crash_after": {"grid": [CRASH_AFTER, NEVER]}},
                             "num_samples": 1,
                             "max_concurrent_trials": 2}}],
    })
    summary = run_recipe(recipe, tmp_path, echo=lambda line: None)
    assert summary["status"] == "complete"
    (stage,) = summary["stages"]
    trials = {trial["config"]["model.kwargs.crash_after"]: trial for trial in stage["trials"]}
    crashed, sibling = trials[CRASH_AFTER], trials[NEVER]
    assert crashed["status"] == "error" and "injected crash" in crashed["error"]
    assert crashed["epochs_run"] == 1  # epoch 1 reported, epoch 2 crashed
    assert sibling["status"] == "done" and sibling["epochs_run"] == 3
    assert stage["best_trial"] == sibling["trial_id"] and stage["best_config"] == {"model.kwargs.crash_after": NEVER}
    assert load_checkpoint(stage["checkpoint"])["epoch"] == 3
