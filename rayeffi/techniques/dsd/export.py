"""Export the last sparse phase of a ``dsd`` stage from a run directory, and verify it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from rayeffi.errors import UserError
from rayeffi.techniques.dsd.formats import decode_state, encode_state
from rayeffi.checkpoint import load_checkpoint, save_atomic


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from an exported file (plain ``torch.load(..., weights_only=True)`` inside)."""
    return decode_state(torch.load(path, map_location="cpu", weights_only=True))


def _serialized_size(body) -> int:
    buffer = io.BytesIO()
    torch.save(body, buffer)
    return buffer.tell()


def sparse_phase(checkpoint: dict) -> dict | None:
    """The dsd stage's last sparse phase; a pipelined stage's is the union of its stages' parts
    (each holds its own layers, under the full model's names)."""
    parts = [s.get("techniques", {}).get("dsd", {}).get("sparse") for s in checkpoint.get("pipeline_stages", [checkpoint])]
    if not all(parts):
        return None
    merged = dict(parts[0])
    for key in ("model", "masks"):
        merged[key] = {name: value for part in parts for name, value in part[key].items()}
    return merged


def export_stage(run_dir: str | Path, stage: str, fmt: str, out: str | Path | None = None) -> dict:
    """Write ``run_dir/stages/STAGE/sparse-FMT.pt``; return sizes, sparsity and the check."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise UserError(f"{summary_path} does not exist: give the --out directory of a rayeffi run")
    stages = {s["name"]: s for s in json.loads(summary_path.read_text()).get("stages", [])}
    if stage not in stages:
        raise UserError(f"run {run_dir} has no stage {stage!r}; stages: {', '.join(stages) or 'none'}")
    if "rounds" not in stages[stage]:  # DSD's summary (a kind: dsd stage, or a dsd item in its techniques)
        raise UserError(f"stage {stage!r} did not run the dsd technique: export needs a dsd stage's sparse phase")
    sparse = sparse_phase(load_checkpoint(stages[stage]["checkpoint"]))
    if not sparse:
        raise UserError(f"stage {stage!r} has no completed sparse phase to export")

    state, masks = sparse["model"], sparse["masks"]
    body = encode_state(state, list(masks), fmt)
    path = Path(out) if out else run_dir / "stages" / stage / f"sparse-{fmt}.pt"
    save_atomic(body, path)

    loaded = load_sparse(path)
    identical = loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    layer_sparsity = {name: (loaded[name] == 0).sum().item() / loaded[name].numel() for name in masks}
    masks_hold = all(((loaded[name] == 0) | mask).all().item() and (loaded[name][~mask] == 0).all().item()
                     for name, mask in masks.items())
    if not (identical and masks_hold):
        raise RuntimeError(f"exported file {path} does not load back to the sparse weights")
    return {
        "path": str(path),
        "format": fmt,
        "round": sparse["round"],
        "target_sparsity": sparse["sparsity"],
        "layer_sparsity": layer_sparsity,
        "bytes": path.stat().st_size,
        "dense_bytes": _serialized_size(state),
        "verified": True,
    }
