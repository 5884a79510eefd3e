"""A sharded parameter server on Ray actors (Dean et al., NIPS 2012: DistBelief, Downpour SGD).

Its own execution model, not a Ray Train run: server shards (:mod:`.server`) hold the
FP32 parameters and the optimizer state, gradient workers (:mod:`.worker`) hold a
model replica and their data shard, and the stage runner
(``rayeffi/stages/param_server.py``) drives epochs from the driver. The pure parts are
:mod:`.plan` (which parameter lives on which shard), :mod:`.wire` (gradients in
FP16/BF16 on the wire) and :mod:`.staleness` (the bounded-staleness gate).
"""

from rayeffi.param_server.plan import shard_plan
from rayeffi.param_server.staleness import StalenessGate
from rayeffi.param_server.wire import decode_gradients, encode_gradients

__all__ = ["StalenessGate", "decode_gradients", "encode_gradients", "shard_plan"]
