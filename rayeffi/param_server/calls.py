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
    """The driver's watch over a stage's actors: one that Ray has to place again (its node
    left) and cannot, for ``scaling.start_timeout_s``, ends the stage with one error line.
    Ray itself would keep it pending for ever, and every call to it with it."""

    def __init__(self, stage: StageConfig, actors: dict[str, Any]):
        self.stage, self.timeout_s = stage.name, stage.scaling.start_timeout_s
        self.ids = {name: actor._actor_id.hex() for name, actor in actors.items()}
        self.unplaced_since: dict[str, float] = {}

    def check(self) -> None:
        from ray._private.state import actors as actor_table

        now = time.monotonic()
        alive_nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        for name, actor_id in self.ids.items():
            info = actor_table(actor_id=actor_id) or {}
            node = (info.get("Address") or {}).get("NodeID")
            if info.get("State") == "ALIVE" or node in alive_nodes:  # up, or being built on a live node
                self.unplaced_since.pop(name, None)
                continue
            since = self.unplaced_since.setdefault(name, now)
            if now - since > self.timeout_s:
                free = ", ".join(f"{k}: {v:g}" for k, v in sorted(ray.available_resources().items())
                                 if k in ("CPU", "GPU") or not k.startswith(("node:", "memory", "object_store")))
                raise UserError(
                    f"stage {self.stage}: the cluster could not place the parameter server's {name} again within "
                    f"scaling.start_timeout_s ({self.timeout_s:g} s) (a node may have left; free now: {free}); "
                    "add nodes, or lower scaling.num_workers, scaling.resources_per_worker or "
                    "parallel.server_cpus, or raise scaling.start_timeout_s to wait longer")
