"""Where Ray Train keeps a run's checkpoints: a local path or a pyarrow filesystem URI.

On one machine the default, ``OUT/ray``, is enough. On a multi-node cluster every
worker writes there, so it must be shared: an NFS path mounted on every node, or a URI
(``s3://``, ``gs://``, ``hdfs://``, ``abfs://``) that pyarrow opens from every node.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from urllib.parse import urlparse

from rayeffi.errors import UserError

URI_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
"""Schemes ``pyarrow.fs.FileSystem.from_uri`` opens."""
STATE_FILE = "state.pt"


def resolve_storage(storage: str | None, out_dir: Path) -> str:
    """The storage as Ray Train takes it: an absolute path, or a URI checked by its scheme only
    (opening an ``s3://`` filesystem here would reach the network before any error is shown)."""
    if storage is None:
        return str(out_dir / "ray")
    scheme = urlparse(storage).scheme
    if "://" not in storage:
        return str(Path(storage).expanduser().absolute())
    if scheme not in URI_SCHEMES:
        raise UserError(
            f"--storage {storage}: '{scheme}://' is not a filesystem pyarrow opens; give a path or a URI "
            f"with one of {', '.join(s + '://' for s in URI_SCHEMES)}"
        )
    return storage


def filesystem(storage: str):
    """``(pyarrow filesystem, path inside it)`` for a storage path or URI."""
    import pyarrow.fs

    if "://" not in storage:
        return pyarrow.fs.LocalFileSystem(), storage
    return pyarrow.fs.FileSystem.from_uri(storage)


def stage_checkpoints(storage: str, stage_name: str) -> list[str]:
    """Every checkpoint directory of every Ray Train run of ``stage_name`` under ``storage``.

    Runs are named ``NAME-xxxxxxxx`` (stages/train_run.py); a Tune trial's runs are
    ``NAME-<trial id>`` and its experiment ``NAME-tune-xxxxxxxx``, so neither matches.
    """
    import pyarrow.fs

    fs, root = filesystem(storage)
    run_name = re.compile(re.escape(stage_name) + r"-[0-9a-f]{8}")
    found = []
    for run in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True)):
        if run.type != pyarrow.fs.FileType.Directory or not run_name.fullmatch(run.base_name):
            continue
        for entry in fs.get_file_info(pyarrow.fs.FileSelector(run.path)):
            if entry.type == pyarrow.fs.FileType.Directory and entry.base_name.startswith("checkpoint_"):
                found.append(entry.path)
    return found


def read_state_bytes(storage: str, checkpoint_dir: str) -> bytes | None:
    """The checkpoint's ``state.pt`` bytes, or None if it is missing."""
    fs, _ = filesystem(storage)
    try:
        with fs.open_input_stream(f"{checkpoint_dir}/{STATE_FILE}") as stream:
            return stream.read()
    except (FileNotFoundError, OSError):
        return None


def load_state(data: bytes) -> dict | None:
    """A checkpoint state from its bytes, or None for a file cut short by a crash."""
    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # a truncated upload raises one of several errors
        return None
    return state if isinstance(state, dict) and "epoch" in state and "model" in state else None
