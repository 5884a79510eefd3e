"""Benchmarks: each measures its baseline in the same run and prints the ratio.

Each is imported when it runs: ``rayeffi bench precision`` needs neither Ray nor pydantic
(it runs on a GPU machine that has neither, ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import importlib
import statistics
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
    "startup": "startup",
    "compile": "compile",
    "memory": "memory",
    "soak": "soak",
}

BENCHMARK_NAMES = tuple(_MODULES)


def steady_epoch_s(epoch_seconds: list[float]) -> float:
    """Steady-state seconds per epoch: the median epoch, the first (warm-up: start-up, the
    shard read into memory) left out when there are others. Every bench that times epochs uses it."""
    return statistics.median(epoch_seconds[1:] or epoch_seconds)


def benchmark(name: str) -> Callable:
    """The ``run(args)`` of benchmark ``name``."""
    return importlib.import_module(f"rayeffi.bench.{_MODULES[name]}").run


__all__ = ["BENCHMARK_NAMES", "benchmark", "steady_epoch_s"]
