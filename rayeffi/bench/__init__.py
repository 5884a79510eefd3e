"""Benchmarks: each measures its baseline in the same run and prints the ratio."""

from rayeffi.bench import ddp, dsd, precision, ps

BENCHMARKS = {"ddp": ddp.run, "dsd": dsd.run, "precision": precision.run, "ps": ps.run}

__all__ = ["BENCHMARKS"]
