"""``rayeffi export``: a DSD stage's sparse weights in a compressed file."""

from rayeffi.export.formats import decode_state, encode_state
from rayeffi.export.stage import export_stage, load_sparse

__all__ = ["decode_state", "encode_state", "export_stage", "load_sparse"]
