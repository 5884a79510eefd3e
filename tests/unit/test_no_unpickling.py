"""No ``torch.load`` in the package may unpickle code: every call passes ``weights_only=True``."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

import rayeffi

PACKAGE = Path(rayeffi.__file__).parent


def _torch_load_calls():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                yield path.relative_to(PACKAGE.parent), node


def test_every_torch_load_is_weights_only():
    calls = list(_torch_load_calls())
    assert calls, "the scan found no torch.load at all: it is looking in the wrong place"
    unsafe = [f"{path}:{node.lineno}" for path, node in calls
              if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in node.keywords)]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_bench_results_load_weights_only(tmp_path):
    """What the pipeline and intra-layer benchmarks save (lists, tuples, floats, names) loads back weights-only."""
    events = [[("forward", 0, 1, 0.25, 0.5)]]
    results = [{"windows": [(0.0, 1.0)], "step_times": [0.1], "events": events},
               {"unsplit": [0.1], "split": [0.2], "bytes": {"halo": 128}}]
    torch.save(results, tmp_path / "r.pt")
    assert torch.load(tmp_path / "r.pt", weights_only=True) == results
