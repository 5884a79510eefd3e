"""Starting weights as people have them: one reader for every format, one matcher to a model.

:func:`read_weights` turns a file or folder into a state_dict (``weights/read.py``): a plain
``state_dict`` file (``.pt``, ``.pth``, ``.bin``, also a dict holding one under
``state_dict`` or ``model``), a ``.safetensors`` file, a Hugging Face ``save_pretrained``
folder (sharded or not), or a rayeffi checkpoint. :func:`match_weights` lines its keys up
with a model's (``weights/match.py``: prefixes, tied weights, what is missing, unexpected or
mis-shaped) and :func:`load_weights` loads what fits. A stage's ``init_from`` (on the driver's
check and on every worker, the parameter server's shards included) and distillation teachers'
``checkpoint`` load through these.
"""

from __future__ import annotations

from rayeffi.weights.match import WeightsMatch, load_weights, match_weights, mismatch_message, skipped_message
from rayeffi.weights.read import read_weights

__all__ = ["WeightsMatch", "load_weights", "match_weights", "mismatch_message", "read_weights", "skipped_message"]
