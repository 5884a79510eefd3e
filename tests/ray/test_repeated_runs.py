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
    """Ray's GCS keeps up to 100,000 tasks' records by default, then the ids of up to 1,000,000
    dropped ones (a long run grew it ~400 MiB an hour, then ~40: docs/benchmarks.md): a private
    Ray's is started with the lower caps of ``stages/ray_session.py``."""
    from rayeffi.driver.supervise import descendants
    from rayeffi.stages.ray_session import PRIVATE_RAY_ENV

    gcs = [pid for pid, _ in descendants(os.getpid())
           if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"gcs_server")]
    assert len(gcs) == 1
    environ = Path(f"/proc/{gcs[0]}/environ").read_bytes().split(b"\0")
    for name, cap in PRIVATE_RAY_ENV.items():
        assert f"{name}={cap}".encode() in environ, name


def test_tune_forgets_each_trial_result_once_handled(tmp_path, monkeypatch):
    """Ray Tune keeps the future of every result a trial reports until the trial ends, and the
    result with it (~2-3 KB a trial epoch in the driver); ``release_trial_results`` keeps only
    the pending ones: a trial of 30 results never holds more than a few."""
    from ray import tune
    from ray.air.execution._internal.actor_manager import RayActorManager

    from rayeffi.stages.tune import release_trial_results

    release_trial_results()
    held = []
    schedule = RayActorManager._schedule_tracked_actor_task

    def counted(self, tracked_actor_task, *args, **kwargs):
        scheduled = schedule(self, tracked_actor_task, *args, **kwargs)
        held.append(len(self._tracked_actors_to_task_futures[tracked_actor_task._tracked_actor]))
        return scheduled

    monkeypatch.setattr(RayActorManager, "_schedule_tracked_actor_task", counted)

    def trainable(config):
        for step in range(30):
            tune.report({"step": step})

    tuner = tune.Tuner(trainable, run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
    (result,) = tuner.fit()
    assert result.error is None and result.metrics["step"] == 29
    assert len(held) >= 30, held  # one call a result
    assert max(held) <= 3, f"futures a trial held after each call: {held}"
