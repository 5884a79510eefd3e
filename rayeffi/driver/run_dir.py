"""The run directory's own rules, and what a run records about where it ran.

- A run directory holds one run: starting a new run where ``summary.json`` already is
  refuses, naming ``--resume`` (continue it) and ``--overwrite`` (replace it), so an earlier
  run is never replaced by accident.
- ``summary.json``'s ``environment``: versions, host, times and the git commit of the
  recipe's folder, so a figure can be traced to what produced it.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from rayeffi.errors import UserError

SUMMARY_FILE = "summary.json"
RUN_OUTPUTS = (SUMMARY_FILE, "progress.jsonl", "stages", "ray", "tensorboard", "report")
"""What a run writes into its directory (``data/`` is left: the Python API writes its datasets there first)."""


def claim_run_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over an earlier one unless asked; ``overwrite`` removes its outputs."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite together: --resume continues the run in --out, --overwrite "
                        "replaces it; give one")
    summary = out_dir / "summary.json"
    if resume or not summary.exists():
        return
    if not overwrite:
        raise UserError(f"--out {out_dir} already holds a run ({summary}): continue it with --resume, replace it "
                        "with --overwrite, or give another --out")
    for name in RUN_OUTPUTS:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def environment(recipe_dir: Path | None = None) -> dict[str, Any]:
    """Versions, host and start time of this run (``summary.json``'s ``environment``)."""
    versions = {}
    for package in ("rayeffi", "torch", "ray", "pyarrow", "transformers"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "versions": {"python": platform.python_version(), **versions},
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(recipe_dir or Path.cwd()),
    }


def git_commit(folder: Path) -> str | None:
    """The commit checked out in ``folder``'s repository (``+dirty`` with uncommitted changes), if any."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def parameter_counts(checkpoint: str | None) -> dict[str, int]:
    """``parameters`` and ``nonzero_parameters`` of a stage's artifact: every floating tensor of
    its model state that is not a running statistic (DSD's sparsity shows in the second)."""
    if not checkpoint or not Path(checkpoint).is_file():
        return {}
    from rayeffi.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(checkpoint)["model"]
    except (UserError, KeyError):
        return {}
    tensors = [value for key, value in state.items()
               if value.is_floating_point() and not key.endswith(("running_mean", "running_var"))]
    return {"parameters": int(sum(t.numel() for t in tensors)),
            "nonzero_parameters": int(sum(t.count_nonzero().item() for t in tensors))}
