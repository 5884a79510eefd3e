"""Checkpoints: one file per epoch, written atomically, loadable with ``weights_only=True``.

The file holds only tensors and plain Python values:
``{"format", "epoch", "model", "optimizer", "scheduler", "rng", "precision", "techniques", "metrics"}``.
``epoch`` counts completed epochs, so a resumed run starts at that epoch.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

from rayeffi.device import to_cpu
from rayeffi.errors import UserError

CHECKPOINT_FILE = "state.pt"
"""A per-epoch checkpoint's file name inside its directory (Ray Train's storage)."""
ARTIFACT_FILE = "checkpoint.pt"
"""A stage's artifact: ``OUT/stages/NAME/checkpoint.pt``."""
FORMAT_VERSION = 1
TRAINING_KEYS = ("model", "optimizer", "precision", "techniques")
"""What a strategy saves and loads (``Strategy.training_state``); a pipeline adds ``pipeline_stages``."""


def checkpoint_state(
    *, epoch: int, training: dict[str, Any], scheduler: dict[str, Any], rng: list[dict[str, Any]],
    metrics: dict[str, Any], **extra: Any,
) -> dict[str, Any]:
    """The checkpoint format, built in one place for every execution model.

    ``training`` is the strategy's whole training state (:data:`TRAINING_KEYS`, plus
    ``pipeline_stages`` for a pipeline); ``rng`` is every worker's random state in rank
    order; ``extra`` holds an execution model's own entries (the parameter server's).
    """
    return {"format": FORMAT_VERSION, "epoch": epoch, **training, "scheduler": scheduler, "rng": rng,
            "metrics": metrics, **extra}


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename over it.

    A reader (or a crash) never sees a half-written checkpoint: the rename is atomic
    on POSIX filesystems.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(to_cpu(state), handle)  # CPU copies: the file loads on any device
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a rayeffi checkpoint file (or a directory holding ``state.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: give a rayeffi checkpoint file or its directory")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}): is it a rayeffi checkpoint?") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"checkpoint {path} has no 'model' entry: is it a rayeffi checkpoint?")
    return state


def rng_state() -> dict[str, Any]:
    """This process's random state, in a form ``weights_only`` loading accepts."""
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
