"""Speed and memory options of a stage: ``compile`` and ``activation_checkpointing``.

Pure configuration; the worker applies them to the model before the strategy wraps it
(``worker/build.py``, ``models/compiled.py``, ``models/checkpointing.py``). Both may sit at
the recipe's top level (every stage inherits them) or in a stage. See docs/compile_memory.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, PositiveInt

from rayeffi.recipe.sections import Section


class CompileConfig(Section):
    """``torch.compile`` of the model's forward (and distillation teachers'), inside DDP.

    ``compile: true`` is ``compile: {}``; ``compile: false`` (the default) is eager.
    """

    mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    """``torch.compile``'s mode: ``reduce-overhead`` adds CUDA graphs (GPUs), ``max-autotune``
    also searches kernel configurations (a longer first step)."""
    fullgraph: bool = False
    """``true``: a graph break is an error instead of a fall-back to eager for that part."""


class ActivationCheckpointingConfig(Section):
    """Recompute the activations of a model's blocks in the backward instead of keeping them
    (``torch.utils.checkpoint``, non-reentrant). ``activation_checkpointing: true`` is ``{every: 1}``."""

    every: PositiveInt = 1
    """Checkpoint every k-th block (1: every block; 2: the 2nd, 4th, ...), counted in the model's
    block order (``models/checkpointing.py: model_blocks``)."""


def _switch(value: Any) -> Any:
    """``true`` -> ``{}`` (the defaults), ``false`` -> None (off); a mapping as it is."""
    if value is True:
        return {}
    if value is False:
        return None
    if value is None or isinstance(value, (dict, Section)):
        return value
    raise ValueError(f"must be true, false or a mapping of options, got {value!r}")


Compile = Annotated[CompileConfig | None, BeforeValidator(_switch)]
"""The ``compile`` key: ``true``, ``false`` or ``{mode, fullgraph}``."""
ActivationCheckpointing = Annotated[ActivationCheckpointingConfig | None, BeforeValidator(_switch)]
"""The ``activation_checkpointing`` key: ``true``, ``false`` or ``{every: k}``."""
