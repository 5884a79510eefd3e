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
from ray.exceptions import ActorUnavailableError

RESTART_TIMEOUT_S = 300.0


def get_all(calls: list[Callable[[], Any]], timeout_s: float = RESTART_TIMEOUT_S) -> list[Any]:
    """``ray.get`` of ``call()`` for each call, re-sending a call whose actor is restarting."""
    refs = [call() for call in calls]
    deadline = time.monotonic() + timeout_s
    results = []
    for call, ref in zip(calls, refs):
        while True:
            try:
                results.append(ray.get(ref))
                break
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                ref = call()
    return results
