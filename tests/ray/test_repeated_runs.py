"""One driver process running recipe after recipe on one Ray (``rayeffi bench soak``, a notebook,
a sweep script) keeps what it holds flat: every run's progress queue actor is gone when
``run_recipe`` returns, and with it the driver's socket to that actor's process.

A tuned stage is the case that leaked: Tune keeps what ``tune.with_parameters`` hands the
trials (the stage's context, the queue's actor handle in it) for the life of the driver
process, so the queue actor outlived its run unless the driver killed it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray
from ray.util.state import list_actors

from rayeffi.driver.run import run_recipe
from rayeffi.recipe import validate_recipe
from rayeffi.stages.progress import Progress

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]


def test_closing_the_progress_printer_kills_its_queue_actor():
    progress = Progress(lambda line: None)
    actor = progress.queue.actor
    assert ray.get(actor.qsize.remote()) == 0
    progress.close()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.qsize.remote(), timeout=30)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_tuned_runs_leave_no_queue_actor_and_no_descriptor_behind(tmp_path):
    # the cheapest tuned stage: one local-mode trial of one epoch (it runs in its own Tune process)
    recipe = validate_recipe({
        "data": {"max_samples": 128, "batch_size": 32},
        "stages": [{"name": "search", "kind": "train", "epochs": 1, "scaling": {"num_workers": 0},
                    "tune": {"search_space": {"optimizer.lr": {"grid": [0.05]}}, "num_samples": 1,
                             "metric": "val_loss", "mode": "min"}}],
    })
    fds = []
    for run in range(3):
        summary = run_recipe(recipe, tmp_path / f"run-{run}", echo=lambda line: None)
        assert summary["status"] == "complete"
        fds.append(_open_fds())
        queues = [actor for actor in list_actors(filters=[("state", "=", "ALIVE")])
                  if actor.class_name == "_QueueActor"]
        assert not queues, f"run {run}: progress queue actors still alive: {queues}"
    # the first run opens what every later one reuses (the connections to the GCS, the raylet and
    # the Tune trial's worker process); a socket kept to each run's queue actor added one a run
    assert fds[2] == fds[0], f"the driver's open descriptors after each run: {fds}"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the GCS's environment in /proc")
def test_the_private_rays_gcs_keeps_a_bounded_record_of_tasks():
    """Ray's GCS keeps up to 100,000 tasks' records by default (a long run grew it ~400 MiB an
    hour: docs/benchmarks.md): a private Ray's is started with the lower cap of ``stages/ray_session.py``."""
    from rayeffi.driver.supervise import descendants
    from rayeffi.stages.ray_session import PRIVATE_RAY_ENV

    gcs = [pid for pid, _ in descendants(os.getpid())
           if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"gcs_server")]
    assert len(gcs) == 1
    environ = Path(f"/proc/{gcs[0]}/environ").read_bytes().split(b"\0")
    cap = PRIVATE_RAY_ENV["RAY_task_events_max_num_task_in_gcs"]
    assert f"RAY_task_events_max_num_task_in_gcs={cap}".encode() in environ
