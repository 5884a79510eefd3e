"""Actor calls that survive an actor restart.

While Ray restarts a dead actor, calls to it fail with ``ActorUnavailableError`` ("may
or may not have been executed"). Each such call is sent again once the actor is back;
the others are not, so a healthy shard never sees a push twice. A push re-sent to a
restarted shard may apply twice in async mode (at-least-once); sync rounds drop repeats.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError

from rayeffi.errors import UserError
from rayeffi.recipe.models import StageConfig

RESTART_TIMEOUT_S = 300.0


def get_all(calls: list[Callable[[], Any]], timeout_s: float = RESTART_TIMEOUT_S,
            watch: Placement | None = None) -> list[Any]:
    """``ray.get`` of ``call()`` for each call, re-sending a call whose actor is restarting;
    with ``watch`` (the driver's), waiting checks every second that no actor is left unplaced."""
    refs = [call() for call in calls]
    deadline = time.monotonic() + timeout_s
    results = []
    for call, ref in zip(calls, refs):
        while True:
            try:
                results.append(ray.get(ref, timeout=None if watch is None else WATCH_EVERY_S))
                break
            except GetTimeoutError:
                watch.check()
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                ref = call()
    return results


WATCH_EVERY_S = 1.0


class Placement:
    """The driver's watch over a stage's actors: one that Ray restarts (its node left) and that
    is not up again after ``scaling.start_timeout_s`` ends the stage with one error line. Ray
    itself would keep it pending for ever where no node can take it, and every call to it."""

    def __init__(self, stage: StageConfig, actors: dict[str, Any]):
        self.stage, self.timeout_s = stage.name, stage.scaling.start_timeout_s
        self.resources = {"CPU", *stage.scaling.resources_per_worker}  # what the stage's actors ask for
        self.ids = {name: actor._actor_id.hex() for name, actor in actors.items()}
        self.unplaced_since: dict[str, float] = {}

    def check(self) -> None:
        from ray._private.state import actors as actor_table

        now = time.monotonic()
        for name, actor_id in self.ids.items():
            info = actor_table(actor_id=actor_id) or {}
            # a first start is not watched (the run's checks placed it), a restart is, by its state
            # alone: while it waits for a node, the GCS shows an address where it does not run
            if info.get("State") in ("ALIVE", "DEAD") or not info.get("NumRestarts"):
                self.unplaced_since.pop(name, None)
                continue
            since = self.unplaced_since.setdefault(name, now)
            if now - since > self.timeout_s:
                available = ray.available_resources()
                free = ", ".join(f"{k}: {available.get(k, 0):g}" for k in sorted(self.resources))
                raise UserError(
                    f"stage {self.stage}: the cluster could not start the parameter server's {name} again within "
                    f"scaling.start_timeout_s ({self.timeout_s:g} s) (a node may have left; free now: {free}); "
                    "add nodes, or lower scaling.num_workers, scaling.resources_per_worker or "
                    "parallel.server_cpus, or raise scaling.start_timeout_s to wait longer")
