"""Benchmarks: each measures its baseline in the same run and prints the ratio."""

from rayeffi.bench import ddp, dsd, pipeline, precision

BENCHMARKS = {"ddp": ddp.run, "dsd": dsd.run, "precision": precision.run, "pipeline": pipeline.run}

__all__ = ["BENCHMARKS"]
