"""A node leaves a loopback ``ray.cluster_utils.Cluster`` in the middle of a stage.

The head holds the driver's side (1 CPU for Ray Data, Tune trials' drivers); every worker
node holds one ``slot`` (and one trial's unit), which each worker (or local-mode trial) of
the stage asks for, so removing a node takes exactly what ran on it:

1. a Train stage's worker node: the group restarts on the nodes left, from the last
   checkpoint, and runs every epoch once;
2. the same when no node is left to take the worker: one error line after the retries
   (``scaling.start_timeout_s`` each), not a wait for ever;
3. a parameter-server shard's node: Ray restarts the shard elsewhere from its checkpoint
   and the stage finishes every epoch;
4. a Tune trial's node: a local-mode trial runs again from its last checkpoint, a trial's
   Ray Train run restarts its worker group, and the search goes on.

Minutes in all (Ray declares the node dead, places the group again): the slow tier.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from helpers.cluster import registered_epoch, registered_epochs, wait_for
from helpers.ray_head import helpers_importable_by_workers
from rayeffi.checkpoint import load_checkpoint
from rayeffi.driver.run import run_recipe
from rayeffi.errors import UserError
from rayeffi.recipe import validate_recipe
from rayeffi.stages.ray_session import LOOPBACK_IP, TRIAL_RESOURCE, loopback_only

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SLOT = "slot"
SLOW_MODEL = {"name": "helpers.user_models:slow", "kwargs": {"sleep_s": 0.25}}  # ~2 s per epoch, sleeping
ON_A_SLOT = {"CPU": 1, SLOT: 1}
EPOCHS_PER_TRIAL = 8  # room to remove a node mid-trial on a busy machine


@pytest.fixture(scope="module")
def cluster(own_ray):
    with helpers_importable_by_workers(), loopback_only():
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "resources": {TRIAL_RESOURCE: 8}, "include_dashboard": False,
            "node_ip_address": LOOPBACK_IP})
    cluster.wait_for_nodes()
    yield cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


def slot_nodes(cluster: Cluster, count: int) -> None:
    """Exactly ``count`` worker nodes, one ``slot`` each (tests leave fewer behind)."""
    with helpers_importable_by_workers(), loopback_only():
        while len(cluster.worker_nodes) < count:
            cluster.add_node(num_cpus=1, resources={SLOT: 1, TRIAL_RESOURCE: 1}, node_ip_address=LOOPBACK_IP)
    for node in list(cluster.worker_nodes)[count:]:
        cluster.remove_node(node)
    cluster.wait_for_nodes()


def epochs_reported(out: Path, stage: str) -> list[int]:
    path = out / "progress.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row["epoch"] for row in rows if row.get("stage", "").split("/")[0] == stage and "epoch" in row]


def remove_node_of(cluster: Cluster, class_name: str) -> str:
    """Remove the (non-head) node running an alive actor of ``class_name``; its node id.
    The actor table comes from the GCS (the cluster has no dashboard)."""
    from ray._private.state import actors

    def find():
        if not ray.is_initialized():  # the driver joins the cluster at the run's start
            return None
        try:
            table = actors(actor_state_name="ALIVE")
        except ray.exceptions.RaySystemError:  # joined, its state client not connected yet
            return None
        found = [a for a in table.values()  # Tune's trial class is at times named wrap_function.<locals>.ImplicitFunc
                 if a["ActorClassName"].rsplit(".", 1)[-1] == class_name]
        return [a["Address"]["NodeID"] for a in found if a["Address"]["NodeID"] != cluster.head_node.node_id]

    (node_id, *_) = wait_for(find, timeout_s=300, what=f"an alive {class_name} off the head", every_s=0.2)
    (node,) = [node for node in cluster.worker_nodes if node.node_id == node_id]
    cluster.remove_node(node)
    return node_id


def in_background(action, seen: dict) -> threading.Thread:
    def body():
        try:
            seen["removed"] = action()
            seen["removed_at"] = time.monotonic()
        except Exception as exc:  # reported by the test, not lost in the thread
            seen["error"] = repr(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def remove_after_the_first_epoch(cluster: Cluster, out: Path, stage: str, class_name: str,
                                 seen: dict) -> threading.Thread:
    """In the background: once ``stage`` has logged an epoch, remove the node of a ``class_name`` actor."""
    def action():
        wait_for(lambda: epochs_reported(out, stage), what="the first epoch")
        return remove_node_of(cluster, class_name)

    return in_background(action, seen)


def ps_recipe(epochs: int, **scaling):
    """Two 1-CPU shards and one half-CPU gradient worker."""
    return validate_recipe({
        "data": {"max_samples": 512, "batch_size": 64},
        "model": {"name": "helpers.user_models:slow", "kwargs": {"sleep_s": 0.05}},
        "parallel": {"strategy": "param_server", "num_servers": 2, "server_cpus": 1},
        "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": 0.5}, "max_failures": 2, **scaling},
        "stages": [{"name": "ps", "kind": "train", "epochs": epochs}],
    })


def test_a_train_stage_restarts_on_the_nodes_left(cluster, tmp_path):
    slot_nodes(cluster, 3)  # the group of 2 and one spare
    recipe = validate_recipe({
        "data": {"max_samples": 512, "batch_size": 64},
        "model": SLOW_MODEL,
        "scaling": {"num_workers": 2, "resources_per_worker": ON_A_SLOT, "max_failures": 1},
        "stages": [{"name": "train", "kind": "train", "epochs": 4}],
    })
    seen: dict = {}

    def after_the_first_checkpoint():
        seen["registered"] = wait_for(lambda: registered_epoch(tmp_path / "ray", "train"), what="a checkpoint")
        return remove_node_of(cluster, "RayTrainWorker")

    thread = in_background(after_the_first_checkpoint, seen)
    summary = run_recipe(recipe, tmp_path, address=cluster.address, echo=lambda line: None)
    thread.join(timeout=10)
    assert "error" not in seen, seen["error"]
    (stage,) = summary["stages"]
    assert summary["status"] == "complete"
    ((from_epoch,),) = [tuple(restart.values()) for restart in stage["restarts"]]
    assert seen["registered"] <= from_epoch < 4  # from a registered checkpoint, not from scratch
    assert [row["epoch"] for row in stage["history"]] == [1, 2, 3, 4]
    assert load_checkpoint(stage["checkpoint"])["epoch"] == 4


def test_a_group_the_nodes_left_cannot_hold_ends_in_one_error(cluster, tmp_path):
    slot_nodes(cluster, 2)  # exactly the group
    recipe = validate_recipe({
        "data": {"max_samples": 512, "batch_size": 64},
        "model": SLOW_MODEL,
        "scaling": {"num_workers": 2, "resources_per_worker": ON_A_SLOT, "max_failures": 1,
                    "start_timeout_s": 5},
        "stages": [{"name": "train", "kind": "train", "epochs": 20}],
    })
    seen: dict = {}
    thread = remove_after_the_first_epoch(cluster, tmp_path, "train", "RayTrainWorker", seen)
    with pytest.raises(UserError) as raised:
        run_recipe(recipe, tmp_path, address=cluster.address, echo=lambda line: None)
    ended = time.monotonic()
    thread.join(timeout=10)
    assert "error" not in seen, seen["error"]
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("stage train: the cluster could not place 2 workers")
    assert "scaling.start_timeout_s (5 s), 2 tries" in message and "free now: CPU: " in message
    print(f"\n{message}\nnode removed -> error: {ended - seen['removed_at']:.1f} s")
    assert ended - seen["removed_at"] < 120  # two 5 s tries, plus Ray noticing the node is gone
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "error" and summary["error"] == message


def test_a_parameter_server_shard_moves_to_another_node(cluster, tmp_path):
    slot_nodes(cluster, 3)  # a shard moves to a node with a CPU free
    seen: dict = {}
    thread = remove_after_the_first_epoch(cluster, tmp_path, "ps", "ServerShard", seen)
    summary = run_recipe(ps_recipe(4), tmp_path, address=cluster.address, echo=lambda line: None)
    thread.join(timeout=10)
    assert "error" not in seen, seen["error"]
    (stage,) = summary["stages"]
    assert summary["status"] == "complete"
    assert [row["epoch"] for row in stage["history"]] == [1, 2, 3, 4]
    assert sum(row["server_restores"] for row in stage["history"]) == 1  # the shard, from its checkpoint
    assert stage["metrics"]["val_accuracy"] > 0.5


def starts(out: Path, label_prefix: str) -> dict[str, list[int]]:
    """Each trial's starts (``from_epoch`` of each) from the epoch log."""
    found: dict[str, list[int]] = {}
    for line in (out / "progress.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("event") == "start" and row.get("stage", "").startswith(label_prefix):
            found.setdefault(row["stage"], []).append(row["from_epoch"])
    return found


def tuned_recipe(num_workers: int, epochs: int):
    """Two trials at once (two learning rates), each on a slot: in its own process
    (``num_workers: 0``) or driving a one-worker Train run."""
    return validate_recipe({
        "data": {"max_samples": 512, "batch_size": 64},
        "model": SLOW_MODEL,
        "scaling": {"num_workers": num_workers, "resources_per_worker": ON_A_SLOT, "max_failures": 1},
        "stages": [{"name": "tuned", "kind": "train", "epochs": epochs,
                    "tune": {"search_space": {"optimizer.lr": {"grid": [0.01, 0.05]}}, "num_samples": 1,
                             "metric": "val_loss", "mode": "min", "max_concurrent_trials": 2}}],
    })


def assert_the_search_went_on(summary: dict, out: Path, epochs: int) -> None:
    """Both trials done at their last epoch; one of them (on the removed node) started again,
    from a checkpoint (epoch 1 or later), not from scratch."""
    (stage,) = summary["stages"]
    assert summary["status"] == "complete"
    trials = stage["trials"]
    assert len(trials) == 2 and all(trial["status"] == "done" for trial in trials), trials
    assert all(trial["metrics"]["epoch"] == epochs for trial in trials)
    restarted = {label: froms for label, froms in starts(out, "tuned/").items() if len(froms) > 1}
    assert len(restarted) == 1, starts(out, "tuned/")
    ((first, again),) = restarted.values()
    assert first == 0 and again >= 1


def test_a_tune_trial_runs_again_from_its_checkpoint_and_the_search_goes_on(cluster, tmp_path):
    slot_nodes(cluster, 3)  # two local-mode trials (each trains in its own process, on a slot) and a spare
    seen: dict = {}

    def after_two_epochs_of_each_trial():
        wait_for(lambda: len(epochs_reported(tmp_path, "tuned")) >= 4, what="two epochs of each trial")
        return remove_node_of(cluster, "ImplicitFunc")  # a trial's process: Tune runs it again

    thread = in_background(after_two_epochs_of_each_trial, seen)
    summary = run_recipe(tuned_recipe(0, EPOCHS_PER_TRIAL), tmp_path, address=cluster.address,
                         echo=lambda line: None)
    thread.join(timeout=10)
    assert "error" not in seen, seen["error"]
    assert_the_search_went_on(summary, tmp_path, EPOCHS_PER_TRIAL)


def test_a_shard_no_node_can_take_again_ends_in_one_error(cluster, tmp_path):
    slot_nodes(cluster, 2)  # 3 CPUs: two 1-CPU shards and a half-CPU worker, with no room for a third CPU
    seen: dict = {}
    thread = remove_after_the_first_epoch(cluster, tmp_path, "ps", "ServerShard", seen)
    with pytest.raises(UserError) as raised:
        run_recipe(ps_recipe(30, start_timeout_s=5), tmp_path, address=cluster.address, echo=lambda line: None)
    ended = time.monotonic()
    thread.join(timeout=10)
    assert "error" not in seen, seen["error"]
    message = str(raised.value)
    print(f"\n{message}\nnode removed -> error: {ended - seen['removed_at']:.1f} s")
    assert "\n" not in message
    assert message.startswith("stage ps: the cluster could not start the parameter server's server shard ")
    assert "within scaling.start_timeout_s (5 s)" in message
    assert ended - seen["removed_at"] < 60
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "error"


def test_a_tune_trials_train_run_restarts_on_the_nodes_left(cluster, tmp_path):
    slot_nodes(cluster, 3)  # two trials' one-worker Train runs and a spare node
    seen: dict = {}

    def after_a_registered_checkpoint_of_each_trial():
        wait_for(lambda: len(registered_epochs(tmp_path / "ray", "tuned")) >= 2, what="a checkpoint of each trial",
                 every_s=0.2)
        return remove_node_of(cluster, "RayTrainWorker")  # the trial's Train run restarts its group

    thread = in_background(after_a_registered_checkpoint_of_each_trial, seen)
    summary = run_recipe(tuned_recipe(1, 5), tmp_path, address=cluster.address, echo=lambda line: None)
    thread.join(timeout=10)
    assert "error" not in seen, seen["error"]
    assert_the_search_went_on(summary, tmp_path, 5)
