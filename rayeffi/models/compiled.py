"""``torch.compile`` of a model's forward, in place, and a count of the graphs it built.

:func:`compile_model` calls ``nn.Module.compile``: the module's ``__call__`` goes through
TorchDynamo and Inductor (on a CPU, Inductor's C++ backend: gcc or clang must be on the
machine) while its class, its submodules and its ``state_dict`` keys stay as they were (no
``_orig_mod.`` prefix), so DDP wraps it (compiled inside DDP, as PyTorch recommends for
data parallelism), checkpoints load into it and techniques see the same parameters.

A compiled graph is reused while its guards hold: parameters are graph inputs, so weights
changed in place between steps (the optimizer, DSD's masks applied after each step) reuse
it. A new graph is built for a new batch shape (the first one marks the batch dimension
dynamic, so later sizes reuse that graph), for evaluation (eval mode, no grad) and for a
changed autocast; :func:`compiled_graphs` counts them.
"""

from __future__ import annotations

from torch import nn


def compile_model(model: nn.Module, mode: str = "default", fullgraph: bool = False) -> nn.Module:
    """``model`` with its forward compiled (in place, lazily: the first call compiles)."""
    model.compile(mode=mode, fullgraph=fullgraph)
    return model


def compiled_graphs() -> int:
    """Graphs TorchDynamo has built in this process so far (every model, every recompile)."""
    from torch._dynamo.utils import counters  # no public counter of compiled graphs yet

    return int(counters["stats"]["unique_graphs"])
