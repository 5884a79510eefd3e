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


GRADIENT_TOLERANCE = 0.05
"""How far (relative to the largest eager gradient of a parameter) a compiled gradient may stray:
Inductor's own reduction order moved a 28x28 CNN's convolution gradients by 0.2% of their
largest (``rayeffi bench compile``); the failure this guards against is 100% (all zero)."""


def compiled_gradient_mismatch(model: nn.Module, inputs, targets, loss, extras=None, mode: str = "default",
                               fullgraph: bool = False) -> str | None:
    """One forward and backward of ``inputs`` through a copy of ``model`` eagerly and through another
    copy compiled, in FP32 and eval mode (dropout off: compiled dropout draws its own masks);
    where some parameter's gradients differ by more than ``GRADIENT_TOLERANCE`` of the eager
    gradient's largest magnitude, a line naming it and both magnitudes, else None.

    torch.compile's CPU backend was seen to return all-zero gradients for the convolutions of
    rayeffi's default ``cnn`` (conv 16 and 32 channels, max-pool, a 64-unit hidden layer) on 16
    or more random rows, while its forward and its loss were exact: training then quietly leaves
    those layers untrained (on the built-in digits' rows the same model's gradients agreed).
    The driver runs this before any worker compiles (``driver/preflight.py``).
    """
    import copy

    import torch

    from rayeffi.models.inputs import call_model
    from rayeffi.task import logits_of

    gradients = []
    for compiled in (False, True):
        copied = copy.deepcopy(model).float().eval()
        if compiled:
            compile_model(copied, mode, fullgraph)
        copied.zero_grad(set_to_none=True)
        loss(logits_of(call_model(copied, inputs, extras)).float(), targets).backward()
        gradients.append({name: (param.grad if param.grad is not None else torch.zeros_like(param))
                          for name, param in copied.named_parameters() if param.requires_grad})
    eager, compiled = gradients
    for name, want in eager.items():
        scale = float(want.abs().max())
        gap = float((compiled[name] - want).abs().max())
        if gap > GRADIENT_TOLERANCE * max(scale, 1e-12):
            return (f"parameter {name}: compiled gradient up to {float(compiled[name].abs().max()):.3g} against "
                    f"{scale:.3g} eager (off by {gap:.3g})")
    return None
