"""Benchmarks: each measures its baseline in the same run and prints the ratio."""

from rayeffi.bench import ddp, distill, dsd, intra_layer, pipeline, precision, prune_distill, ps

BENCHMARKS = {
    "ddp": ddp.run,
    "dsd": dsd.run,
    "precision": precision.run,
    "distill": distill.run,
    "intra-layer": intra_layer.run,
    "pipeline": pipeline.run,
    "ps": ps.run,
    "prune-distill": prune_distill.run,
}

__all__ = ["BENCHMARKS"]
