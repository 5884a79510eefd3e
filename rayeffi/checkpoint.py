"""Checkpoints: one file per epoch, written atomically, loadable with ``weights_only=True``.

The file holds only tensors and plain Python values:
``{"format", "epoch", "step", "global_step", "model", "optimizer", "scheduler", "rng", "precision",
"techniques", "metrics"}``. ``epoch`` counts completed epochs, so a resumed run starts at that
epoch; ``step`` counts the optimizer steps already made in it (0 at an epoch's end; absent in
checkpoints written before ``checkpoint_every_steps``, which read as 0), so a resumed run
continues that epoch from step ``step + 1``; ``global_step`` counts the stage's optimizer steps.
"""

from __future__ import annotations

import os
import random
import re
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
    metrics: dict[str, Any], step: int = 0, global_step: int | None = None, **extra: Any,
) -> dict[str, Any]:
    """The checkpoint format, built in one place for every execution model.

    ``training`` is the strategy's whole training state (:data:`TRAINING_KEYS`, plus
    ``pipeline_stages`` for a pipeline); ``rng`` is every worker's random state in rank
    order; ``extra`` holds an execution model's own entries (the parameter server's). Within an
    epoch (``step`` > 0) ``metrics`` are the last completed epoch's (early stopping's counters).
    """
    position = {"step": step} if global_step is None else {"step": step, "global_step": global_step}
    return {"format": FORMAT_VERSION, "epoch": epoch, **position, **training, "scheduler": scheduler, "rng": rng,
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
    """Load a rayeffi checkpoint file (or a directory holding ``state.pt``).

    Every way a file can fail to be one (missing, a directory without ``state.pt``,
    random bytes, cut short, a pickle holding code, no ``model`` entry) is a
    :class:`UserError` naming the file and what it is not.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / CHECKPOINT_FILE).is_file():
            raise UserError(f"checkpoint {path} is a directory without a checkpoint (no {CHECKPOINT_FILE} in it): "
                            f"give a rayeffi checkpoint file, or a directory holding {CHECKPOINT_FILE}")
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: give a rayeffi checkpoint file or its directory")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise UserError(f"checkpoint {path} {unreadable_reason(exc)}") from None
    model = state.get("model") if isinstance(state, dict) else None
    if not isinstance(model, dict):
        raise UserError(f"checkpoint {path} has no 'model' entry of weights: it is a torch file but not a rayeffi "
                        "checkpoint (those hold {'model': state_dict, ...}); give a checkpoint.pt of a rayeffi run")
    return state


def unreadable_reason(exc: Exception, give: str = "a rayeffi checkpoint.pt") -> str:
    """What a file that ``torch.load`` refused is not, from the error torch raised; ``give``: what to give instead."""
    text = str(exc)
    if "GLOBAL" in text or "Unsupported global" in text:  # the pickle names a function or class to call
        global_name = re.search(r"GLOBAL ([\w.]+)|global: GLOBAL ([\w.]+)", text)
        what = f" ({next(g for g in global_name.groups() if g)})" if global_name else ""
        return (f"holds pickled Python objects{what} besides tensors, which rayeffi refuses to load "
                "(weights_only=True: loading them could run code): give a checkpoint written by rayeffi, "
                "or re-save only its state_dict")
    if isinstance(exc, EOFError) or "central directory" in text or "zip archive" in text or "truncated" in text:
        return f"is cut short or not a torch file (its zip archive does not read): give a complete copy of {give}"
    return f"is not a readable torch checkpoint ({type(exc).__name__}): give {give}"


def rng_state() -> dict[str, Any]:
    """This process's random state, in a form ``weights_only`` loading accepts."""
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def checkpoint_position(state: dict[str, Any]) -> tuple[int, int]:
    """``(completed epochs, optimizer steps made in the next one)``: where a run continues."""
    return int(state["epoch"]), int(state.get("step", 0))


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
