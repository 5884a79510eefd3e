"""Benchmarks: each measures its baseline in the same run and prints the ratio."""

from rayeffi.bench import ddp

BENCHMARKS = {"ddp": ddp.run}

__all__ = ["BENCHMARKS"]
