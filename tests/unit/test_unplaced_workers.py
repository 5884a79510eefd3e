"""A worker group the cluster can no longer place (a node left) ends in one error line.

Ray Train retries a worker group it cannot place without limit by default (each try waits
``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``); a stage gives it ``scaling.max_failures``
retries of ``scaling.start_timeout_s`` each, then says what to change. The node removal
itself runs in ``tests/ray/test_node_loss.py`` (slow tier).
"""

from __future__ import annotations

import pytest
from ray.train import ControllerError
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

from rayeffi.errors import UserError
from rayeffi.recipe import validate_recipe
from rayeffi.stages.train_run import unplaced_message, unplaced_workers


def stage(**scaling):
    recipe = validate_recipe({"scaling": {"num_workers": 2, **scaling},
                              "stages": [{"name": "train", "kind": "train", "epochs": 1}]})
    return recipe.stages[0]


def test_start_timeout_defaults_to_ray_trains_and_must_be_positive():
    assert stage().scaling.start_timeout_s == 60
    for bad in (0, -1):
        with pytest.raises(UserError, match="scaling.start_timeout_s"):
            stage(start_timeout_s=bad)


def test_an_unplaceable_group_is_one_line_naming_the_keys_to_change():
    with pytest.raises(UserError) as raised, unplaced_workers(stage(max_failures=2, start_timeout_s=5,
                                                                     resources_per_worker={"CPU": 1, "slot": 1})):
        raise ControllerError(WorkerGroupStartupTimeoutError(num_workers=2))
    message = str(raised.value)
    assert "\n" not in message and raised.value.__cause__ is None
    assert message.startswith('stage train: the cluster could not place 2 workers of {"CPU": 1.0, "slot": 1.0} '
                              "within scaling.start_timeout_s (5 s), 3 tries")
    for key in ("scaling.num_workers", "scaling.resources_per_worker", "scaling.start_timeout_s"):
        assert key in message


def test_the_line_says_what_the_cluster_has_free():
    assert "(a node may have left; free now: CPU: 3)" in unplaced_message(stage(), {"CPU": 3, "GPU": 1})


def test_other_controller_failures_pass_through():
    with pytest.raises(ControllerError), unplaced_workers(stage()):
        raise ControllerError(RuntimeError("something else"))
