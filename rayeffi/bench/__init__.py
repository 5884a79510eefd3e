"""Benchmarks: each measures its baseline in the same run and prints the ratio."""

from rayeffi.bench import ddp, dsd

BENCHMARKS = {"ddp": ddp.run, "dsd": dsd.run}

__all__ = ["BENCHMARKS"]
