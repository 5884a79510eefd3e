"""A head and two 1-CPU nodes (``ray.cluster_utils.Cluster``): placement, a killed worker, a killed driver.

1. The 2-worker data-parallel stage puts its workers on different nodes, and when one
   of them is killed by PID from outside, the worker group restarts from the last
   registered checkpoint (``scaling.max_failures``) and runs every epoch once.
2. ``rayeffi run --address`` driving the cluster from another process is killed
   mid-stage; ``rayeffi run --resume`` skips the completed stage and continues the
   interrupted one from its last checkpoint (storage given as a ``file://`` URI).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from helpers.cluster import registered_epoch, wait_for
from helpers.ray_head import descendants, free_ports, helpers_importable_by_workers, kill_pids
from rayeffi.cli import main
from rayeffi.recipe import validate_recipe
from rayeffi.driver.run import run_recipe
from rayeffi.bench.sockets import LoopbackWatch
from rayeffi.checkpoint import load_checkpoint
from rayeffi.stages.ray_session import LOOPBACK_IP, loopback_only

pytestmark = pytest.mark.ray

EPOCHS = 4
SLOW_MODEL = {"name": "helpers.user_models:slow", "kwargs": {"sleep_s": 0.25}}  # ~2 s per epoch, sleeping


@pytest.fixture(scope="module")
def cluster(own_ray):
    (dashboard_port,) = free_ports(1)
    with helpers_importable_by_workers(), loopback_only():  # every node binds and is reached on 127.0.0.1
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": True, "dashboard_host": LOOPBACK_IP, "dashboard_port": dashboard_port,
            "node_ip_address": LOOPBACK_IP})
        nodes = [cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK_IP) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, {node.node_id for node in nodes} | {cluster.head_node.node_id}
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


def epochs_after_each_start(progress_file: Path, stage: str) -> list[tuple[int, list[int]]]:
    """``[(from_epoch, [epochs reported after that start]), ...]`` from the epoch log."""
    starts: list[tuple[int, list[int]]] = []
    for line in progress_file.read_text().splitlines():
        message = json.loads(line)
        if message["stage"] != stage:
            continue
        if message.get("event") == "start":
            starts.append((message["from_epoch"], []))
        else:
            starts[-1][1].append(message["epoch"])
    return starts


def _kill_a_worker_after_the_first_checkpoint(storage: Path, seen: dict) -> None:
    from ray.util.state import list_actors

    def alive_workers():
        if not ray.is_initialized():
            return None
        workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")], detail=True)
        return workers if len(workers) == 2 else None

    try:
        workers = wait_for(alive_workers, what="two Ray Train workers", every_s=1.0)  # early: the kill is then quick
        seen["registered"] = wait_for(lambda: registered_epoch(storage, "train"), what="a registered checkpoint")
        seen["nodes"] = sorted(worker.node_id for worker in workers)
        seen["killed_pid"] = workers[-1].pid
        os.kill(workers[-1].pid, signal.SIGKILL)
    except Exception as exc:  # reported by the test, not lost in the thread
        seen["error"] = repr(exc)


@pytest.fixture(scope="module")
def killed_worker_run(cluster, tmp_path_factory):
    cluster, _ = cluster
    out = tmp_path_factory.mktemp("killed-worker")
    recipe = validate_recipe({
        "data": {"max_samples": 512, "batch_size": 64},
        "model": SLOW_MODEL,
        "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 1}, "max_failures": 1},
        "stages": [{"name": "train", "kind": "train", "epochs": EPOCHS}],
    })
    seen: dict = {}
    killer = threading.Thread(target=_kill_a_worker_after_the_first_checkpoint, args=(out / "ray", seen), daemon=True)
    killer.start()
    with LoopbackWatch() as watch:  # every socket of every Ray process, twice a second, during the run
        summary = run_recipe(recipe, out, address=cluster.address, echo=lambda line: None)
    killer.join(timeout=10)
    assert "error" not in seen, seen.get("error")
    seen["loopback"] = watch
    return out, summary, seen


def test_no_ray_socket_leaves_loopback_during_a_multinode_run(cluster, killed_worker_run):
    """GCS, raylets, dashboard, agents, the Train workers and the driver: nothing listens on or
    talks to an address outside 127.0.0.0/8 (the cluster's address itself is loopback)."""
    cluster, _ = cluster
    watch = killed_worker_run[2]["loopback"]
    assert cluster.address.startswith("127.0.0.1:")
    assert watch.samples >= 5 and not watch.findings, sorted(watch.findings)


def test_data_parallel_workers_run_on_different_nodes(cluster, killed_worker_run):
    _, node_ids = cluster
    _, _, seen = killed_worker_run
    assert len(seen["nodes"]) == 2 and len(set(seen["nodes"])) == 2
    assert set(seen["nodes"]) <= node_ids


def test_a_killed_worker_restarts_from_the_last_checkpoint(killed_worker_run):
    out, summary, seen = killed_worker_run
    (stage,) = summary["stages"]
    assert summary["status"] == "complete"
    ((from_epoch,),) = [tuple(restart.values()) for restart in stage["restarts"]]
    assert seen["registered"] <= from_epoch < EPOCHS  # not from scratch: from a registered checkpoint
    assert [row["epoch"] for row in stage["history"]] == list(range(1, EPOCHS + 1))
    # the restarted group ran exactly the epochs after its checkpoint, each once
    (first_start, first_epochs), (restart, restart_epochs) = epochs_after_each_start(out / "progress.jsonl", "train")
    assert first_start == 0 and restart == from_epoch
    assert restart_epochs == list(range(from_epoch + 1, EPOCHS + 1))
    assert first_epochs[:from_epoch] == list(range(1, from_epoch + 1))
    assert load_checkpoint(stage["checkpoint"])["epoch"] == EPOCHS


RESUME_RECIPE = f"""
data: {{max_samples: 512, batch_size: 64}}
model: {json.dumps(SLOW_MODEL)}
scaling: {{num_workers: 2, resources_per_worker: {{CPU: 1}}}}
stages:
  - {{name: warmup, kind: train, epochs: 1, scaling: {{num_workers: 0}}}}
  - name: main
    kind: train
    epochs: 3
    init_from: previous
"""


def test_resume_after_the_driver_was_killed(cluster, tmp_path, capsys):
    cluster, _ = cluster
    if ray.is_initialized():
        ray.shutdown()
    recipe, out, store = tmp_path / "recipe.yaml", tmp_path / "run", tmp_path / "store"
    recipe.write_text(RESUME_RECIPE)
    argv = ["run", str(recipe), "--address", cluster.address, "--out", str(out)]
    tests_dir = str(Path(__file__).resolve().parents[1])  # the driver checks the test model imports
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))}
    driver = subprocess.Popen([sys.executable, "-m", "rayeffi", *argv, "--storage", f"file://{store}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        killed_at = wait_for(lambda: driver.poll() is None and registered_epoch(store, "main"),
                             what="a checkpoint of the main stage")
    finally:
        leftovers = descendants(driver.pid)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        kill_pids(leftovers)
    before = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in before["stages"]] == ["warmup"] and before["status"] == "running"
    warmup_mtime = Path(before["stages"][0]["checkpoint"]).stat().st_mtime

    assert main([*argv, "--resume"]) == 0  # storage comes from the run's summary
    printed = capsys.readouterr().out
    assert "[warmup] complete in an earlier run: skipped" in printed
    summary = json.loads((out / "summary.json").read_text())
    ((resume,),) = [summary["resumes"]]
    assert resume["skipped"] == ["warmup"] and resume["stage"] == "main"
    assert killed_at <= resume["from_epoch"] < 3
    assert f"[main] resuming from the checkpoint of epoch {resume['from_epoch']}" in printed
    assert summary["status"] == "complete" and summary["storage"] == f"file://{store}"
    warmup, stage = summary["stages"]
    assert warmup == before["stages"][0] and Path(warmup["checkpoint"]).stat().st_mtime == warmup_mtime
    assert [row["epoch"] for row in stage["history"]] == [1, 2, 3]
    starts = epochs_after_each_start(out / "progress.jsonl", "main")
    assert starts[-1] == (resume["from_epoch"], list(range(resume["from_epoch"] + 1, 4)))
    assert load_checkpoint(stage["checkpoint"])["epoch"] == 3
