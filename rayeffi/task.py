"""What the model predicts and how it is scored: one class per row, cross-entropy, accuracy.

The model contract. ``forward`` receives one tensor ``[N, num_features]`` (float32, or
int64 token ids for a model whose first layer is an embedding, see
``models.input_cast``) and returns either

- the logits, a tensor ``[N, num_classes]``, or
- an object or mapping carrying them as ``logits`` (a Hugging Face ``ModelOutput``
  such as ``SequenceClassifierOutput``), or a tuple whose first item is the logits
  (``return_dict=False``).

:func:`logits_of` is the one place such outputs are unwrapped: the step, evaluation,
the pipeline's loss and the distillation teachers all go through it, and the step,
the pipeline's loss function and evaluation all score through :func:`task_loss` and
:func:`correct_count`, so they agree to the bit.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits tensor inside whatever the model's ``forward`` returned (see the module docstring)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and "logits" in outputs:  # ModelOutput is an OrderedDict too
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise TypeError(
        f"the model returned {type(outputs).__name__}: forward must return the logits tensor "
        "[N, num_classes], or an object or dict with a 'logits' tensor"
    )


def task_loss(outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    # reductions in FP32 whatever dtype the forward ran in
    return F.cross_entropy(logits_of(outputs).float(), targets, reduction=reduction)


def correct_count(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (logits_of(outputs).argmax(dim=1) == targets).sum()
