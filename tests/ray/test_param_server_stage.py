"""The parameter server through real Ray actors: DSD masks (and task.metrics) on the servers,
a diverged loss that stops the stage with data parallelism's one error line, and asynchronous
training that goes on (to a floor) when a worker or a server shard is killed. The staleness
bound, every push counted, and the checkpoint's contents: the example's run in
tests/ray/test_examples.py; synchronous mode equal to one process on the global batch:
tests/ray/test_lm_stage.py."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import ray
import torch

from rayeffi.errors import UserError
from rayeffi.recipe import validate_recipe
from rayeffi.driver.run import run_recipe
from rayeffi.stages.param_server import ACTOR_PREFIX
from rayeffi.checkpoint import load_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]

LR, MOMENTUM = 0.1, 0.9
COSINE = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": {"name": "cosine"}}


def _recipe(parallel, epochs, **sections):
    return validate_recipe({
        "seed": 0,
        "data": {"batch_size": 64},
        "model": {"name": "mlp", "hidden_sizes": [32]},
        "optimizer": {"name": "sgd", "lr": LR, "momentum": MOMENTUM},
        "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 0.5}, "max_failures": 2},
        "parallel": {"strategy": "param_server", "num_servers": 2, **parallel},
        **sections,
        "stages": [{"name": "train", "kind": "train", "epochs": epochs}],
    })


def _named_actor(suffix: str):
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"] if isinstance(entry, dict) else entry
        if name.startswith(ACTOR_PREFIX) and name.endswith(suffix):
            return ray.get_actor(name, namespace=entry.get("namespace") if isinstance(entry, dict) else None)
    return None


def _kill_when(suffix: str, server, min_version: int, kill) -> None:
    deadline = time.monotonic() + 300  # actor start-up is slow on a loaded machine
    while time.monotonic() < deadline:
        actor, shard = _named_actor(suffix), _named_actor(server)
        if actor is not None and shard is not None:
            try:
                if ray.get(shard.progress.remote(), timeout=5)["version"] >= min_version:
                    kill(actor)
                    return
            except Exception:
                pass
        time.sleep(0.05)
    raise AssertionError(f"never saw {suffix} reach version {min_version}")


def test_training_goes_on_after_a_worker_and_a_server_shard_are_killed(tmp_path):
    recipe = _recipe({"mode": "async", "max_staleness": 2, "checkpoint_every": 10}, 16, optimizer=COSINE)
    done: dict = {}
    runner = threading.Thread(target=lambda: done.update(summary=run_recipe(recipe, tmp_path)))
    runner.start()
    # a worker in epoch 1 (ray.kill: Ray restarts it), then shard 1 in epoch 6 of 16 (SIGKILL of its process)
    _kill_when("-worker-1", "-server-0", 30, lambda actor: ray.kill(actor, no_restart=False))
    _kill_when("-server-1", "-server-0", 250, lambda actor: os.kill(ray.get(actor.pid.remote()), signal.SIGKILL))
    runner.join(timeout=600)
    stage = done["summary"]["stages"][0]
    assert done["summary"]["status"] == "complete"
    assert stage["param_server"]["worker_restarts"] == 1
    assert sum(row["server_restores"] for row in stage["history"]) == 1
    assert [row["epoch"] for row in stage["history"]] == list(range(1, 17))
    assert stage["metrics"]["val_accuracy"] >= 0.85


def test_a_non_finite_loss_stops_the_stage_with_the_data_parallel_error_line(tmp_path):
    """The worker's TrainingDiverged (worker/epoch.py, the loop DDP runs) reaches the driver as
    the same one-line UserError, and no actor of the stage is left running."""
    recipe = _recipe({"mode": "sync"}, 1, data={"batch_size": 16, "max_samples": 256},
                     optimizer={"name": "sgd", "lr": 1.0e30, "momentum": 0.9})
    with pytest.raises(UserError) as raised:
        run_recipe(recipe, tmp_path)
    message = str(raised.value)
    assert message.startswith("stages.train: the training loss became non-finite at epoch 1, step "), message
    assert "lower optimizer.lr" in message and "\n" not in message
    summary = json.loads((tmp_path / "summary.json").read_text())  # the run's record says so too
    assert summary["status"] == "diverged" and summary["error"] == message
    deadline = time.monotonic() + 30  # ray.kill returns before the actor is gone
    while _named_actor("-worker-0") or _named_actor("-server-0"):
        assert time.monotonic() < deadline, "the stage's actors are still running"
        time.sleep(0.1)


def test_dsd_masks_hold_on_the_servers(tmp_path):
    """A dsd stage on the parameter server: pruned weights stay exactly zero through the
    servers' momentum updates, at the target sparsity, where the technique's masks say. Its
    task.metrics are reported as under data parallelism (the same epoch loop)."""
    recipe = validate_recipe({
        "seed": 0,
        "task": {"name": "classification", "metrics": ["helpers.user_scores:top2_accuracy"]},
        "data": {"batch_size": 64, "max_samples": 512},
        "model": {"name": "mlp", "hidden_sizes": [32]},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 0.5}},
        "parallel": {"strategy": "param_server", "num_servers": 2, "mode": "async", "max_staleness": 2},
        "stages": [{"name": "dsd", "kind": "dsd", "dsd": {"rounds": [0.5], "dense_epochs": 1, "sparse_epochs": 2,
                                                          "redense_epochs": 0}}],
    })
    stage = run_recipe(recipe, tmp_path)["stages"][0]
    assert [row["dsd_phase"] for row in stage["history"]] == ["dense", "sparse", "sparse"]
    assert stage["metrics"]["val_accuracy"] <= stage["metrics"]["val_top2_accuracy"] <= 1.0
    state = load_checkpoint(stage["checkpoint"])
    masks = state["techniques"]["dsd"]["masks"]
    assert set(masks) == {"layers.1.weight", "layers.3.weight"}
    for name, mask in masks.items():
        weight = state["model"][name]
        assert torch.all(weight[~mask] == 0)  # pruned: exactly zero after every server update
        assert abs((weight == 0).float().mean().item() - 0.5) < 0.01
