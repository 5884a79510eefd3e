"""Benchmarks: each measures its baseline in the same run and prints the ratio.

Each is imported when it runs: ``rayeffi bench precision`` needs neither Ray nor pydantic
(it runs on a GPU machine that has neither, ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import importlib
from typing import Callable

_MODULES = {
    "ddp": "ddp",
    "dsd": "dsd",
    "precision": "precision",
    "distill": "distill",
    "intra-layer": "intra_layer",
    "pipeline": "pipeline",
    "ps": "ps",
    "prune-distill": "prune_distill",
    "scaling": "scaling",
}

BENCHMARK_NAMES = tuple(_MODULES)


def benchmark(name: str) -> Callable:
    """The ``run(args)`` of benchmark ``name``."""
    return importlib.import_module(f"rayeffi.bench.{_MODULES[name]}").run


__all__ = ["BENCHMARK_NAMES", "benchmark"]
