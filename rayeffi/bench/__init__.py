"""Benchmarks: each measures its baseline in the same run and prints the ratio."""

from rayeffi.bench import ddp, precision

BENCHMARKS = {"ddp": ddp.run, "precision": precision.run}

__all__ = ["BENCHMARKS"]
