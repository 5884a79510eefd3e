"""Waiting on what a Ray Train run has registered, for the multi-node tests."""

from __future__ import annotations

import json
import time
from pathlib import Path


def registered_epochs(storage: Path, stage: str) -> dict[str, int]:
    """Per Ray Train run of ``stage`` (``STAGE-*`` under the storage), the epoch of the newest
    checkpoint Ray Train has registered; a run that has registered none is left out."""
    epochs = {}
    for snapshot in storage.glob(f"{stage}-*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
        except (json.JSONDecodeError, OSError):  # being written
            continue
        if latest:
            epochs[snapshot.parent.name] = int(latest["metrics"]["epoch"])
    return epochs


def registered_epoch(storage: Path, stage: str) -> int:
    """The epoch of the newest checkpoint Ray Train has registered for ``stage`` (0: none yet)."""
    return max(registered_epochs(storage, stage).values(), default=0)


def wait_for(condition, timeout_s: float = 600, what: str = "condition", every_s: float = 0.1):
    """``condition()``'s first true value, polled every ``every_s``; TimeoutError after ``timeout_s``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(what)
