"""Benchmarks: each measures its baseline in the same run and prints the ratio."""

from rayeffi.bench import ddp, distill, dsd, precision

BENCHMARKS = {"ddp": ddp.run, "dsd": dsd.run, "precision": precision.run, "distill": distill.run}

__all__ = ["BENCHMARKS"]
