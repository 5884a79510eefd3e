"""Benchmarks: each measures its baseline in the same run and prints the ratio."""

from rayeffi.bench import ddp, distill, dsd, intra_layer, precision

BENCHMARKS = {"ddp": ddp.run, "dsd": dsd.run, "precision": precision.run, "distill": distill.run}
BENCHMARKS["intra-layer"] = intra_layer.run

__all__ = ["BENCHMARKS"]
