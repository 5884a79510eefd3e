"""Activation checkpointing of a model's blocks (Chen et al. 2016, "Training Deep Nets with
Sublinear Memory Cost"; GPipe's re-materialisation, Huang et al. 2019).

A checkpointed block keeps only its input for the backward; its inner activations are
recomputed from that input when the backward reaches it (``torch.utils.checkpoint``,
non-reentrant: keyword inputs, nested checkpoints and ``torch.compile`` work, and the
random state is replayed, so dropout draws the same mask twice). The gradients are those
of the plain model: only the memory and the time change (about one more forward).

Which blocks a model has (:func:`model_blocks`):

- a Hugging Face model: its layers (the modules its own ``gradient_checkpointing_enable``
  wraps: ``BertLayer``, ``GPT2Block``, ...), through that same switch;
- a model with ``pipeline_units()`` (the built-in ``mlp``, ``cnn``, ``lm`` and any user model
  that lists them): units inside an ``nn.Sequential`` are cut into blocks, each starting at
  a unit that holds parameters and taking the parameter-free units after it (``Conv2d ->
  ReLU -> MaxPool2d``, ``Linear -> ReLU``: checkpointing a lone ``ReLU`` saves nothing);
  any other unit (the ``lm``'s embedding and head) is a block of its own.

The model's modules, names and ``state_dict`` keys do not change: a block's ``forward`` is
replaced on the instance (an ``nn.Sequential``'s by one that runs its blocks), so
checkpoints, DDP, DSD's masks and hooks see the same model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from rayeffi.errors import UserError


@dataclass(frozen=True)
class Block:
    """Consecutive modules run as one checkpointed piece; ``name``: the first one's path."""

    name: str
    modules: tuple[nn.Module, ...]
    owner: nn.Module | None = None
    """The ``nn.Sequential`` that runs them, or None: a single module called by its parent."""


def model_blocks(model: nn.Module) -> list[Block]:
    """The model's blocks in forward order (the module docstring says which); [] if it lists none."""
    if _hugging_face_layers(model):
        return [Block(name, (layer,)) for name, layer in _hugging_face_layers(model)]
    if not hasattr(model, "pipeline_units"):
        return []
    modules = dict(model.named_modules())
    blocks: list[Block] = []
    done: set[str] = set()
    for name, unit in model.pipeline_units():
        if modules.get(name) is not unit:
            continue  # a unit the forward does not call as a module (the cnn's reshape to images)
        parent_name = name.rpartition(".")[0]
        parent = modules.get(parent_name) if "." in name else None
        if isinstance(parent, nn.Sequential):
            if parent_name not in done:
                done.add(parent_name)
                blocks += sequential_blocks(parent, f"{parent_name}.")
        else:
            blocks.append(Block(name, (unit,)))
    return blocks


def sequential_blocks(sequential: nn.Sequential, prefix: str = "") -> list[Block]:
    """An ``nn.Sequential``'s children cut before each child that holds parameters (children
    before the first such one join it)."""
    groups: list[list[tuple[str, nn.Module]]] = []
    for name, child in sequential.named_children():
        if not groups or (_has_parameters(child) and any(_has_parameters(m) for _, m in groups[-1])):
            groups.append([])
        groups[-1].append((name, child))
    return [Block(f"{prefix}{group[0][0]}", tuple(m for _, m in group), sequential) for group in groups]


def checkpoint_blocks(model: nn.Module, every: int = 1) -> list[str]:
    """Checkpoint every ``every``-th block of ``model`` in place (1: all); return their names.

    Raises :class:`UserError` where the model lists no blocks or has fewer than ``every``.
    """
    blocks = model_blocks(model)
    if not blocks:
        raise UserError(f"activation_checkpointing: model {type(model).__name__} lists no blocks: give it a "
                        "pipeline_units() method (its layers in order, as the built-in models have), use a Hugging "
                        "Face model, or remove activation_checkpointing")
    if every > len(blocks):
        raise UserError(f"activation_checkpointing.every {every} is more than the model's {len(blocks)} blocks, so "
                        f"none would be checkpointed: use every <= {len(blocks)}")
    chosen = [index % every == every - 1 for index in range(len(blocks))]  # torchtitan's count: the k-th, 2k-th, ...
    if _hugging_face_layers(model):
        # the model's own switch, which also turns its key/value cache off while training
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # a training forward keeps no key/value cache (HF warns otherwise)
        for block, on in zip(blocks, chosen):
            block.modules[0].gradient_checkpointing = on
    else:
        _wrap(blocks, chosen)
    return [block.name for block, on in zip(blocks, chosen) if on]


def _wrap(blocks: list[Block], chosen: list[bool]) -> None:
    plans: dict[int, tuple[nn.Sequential, list[tuple[tuple[nn.Module, ...], bool]]]] = {}
    for block, on in zip(blocks, chosen):
        if block.owner is None:
            if on:
                module = block.modules[0]
                module.forward = partial(_checkpointed, module.forward, (module,))
            continue
        plans.setdefault(id(block.owner), (block.owner, []))[1].append((block.modules, on))
    for owner, plan in plans.values():
        owner.forward = partial(_run_blocks, plan)


def _run_blocks(plan: list[tuple[tuple[nn.Module, ...], bool]], x: torch.Tensor) -> torch.Tensor:
    """An ``nn.Sequential``'s forward, block by block, the chosen ones checkpointed."""
    for modules, on in plan:
        x = _checkpointed(partial(_run_in_order, modules), modules, x) if on else _run_in_order(modules, x)
    return x


def _run_in_order(modules: tuple[nn.Module, ...], x: torch.Tensor) -> torch.Tensor:
    for module in modules:
        x = module(x)
    return x


def _checkpointed(function, modules: tuple[nn.Module, ...], *args, **kwargs):
    """``function(*args, **kwargs)`` keeping only its inputs for the backward (gradients need grad mode)."""
    if not torch.is_grad_enabled():
        return function(*args, **kwargs)  # evaluation: nothing is saved anyway
    norms = [m for module in modules for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if norms and not torch.compiler.is_compiling():  # compiled graphs update the statistics once themselves
        kwargs["context_fn"] = partial(_statistics_updated_once, norms)
    return checkpoint(function, *args, use_reentrant=False, **kwargs)


def _statistics_updated_once(norms: list[nn.Module]):
    """Checkpoint contexts (forward, recompute): the recompute puts batch norms' running
    statistics back as it found them, so they move once per step, as without checkpointing."""
    return contextlib.nullcontext(), _statistics_restored(norms)


@contextlib.contextmanager
def _statistics_restored(norms: list[nn.Module]):
    saved = [[buffer.clone() for buffer in norm.buffers()] for norm in norms]
    try:
        yield
    finally:  # the recompute may stop early, by an exception, once it has what the backward needs
        with torch.no_grad():
            for norm, buffers in zip(norms, saved):
                for buffer, value in zip(norm.buffers(), buffers):
                    buffer.copy_(value)


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _hugging_face_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """A Hugging Face model's checkpointable layers (``GradientCheckpointingLayer``), or []."""
    if not getattr(model, "supports_gradient_checkpointing", False) or not hasattr(model, "gradient_checkpointing_enable"):
        return []
    from transformers.modeling_layers import GradientCheckpointingLayer  # a Hugging Face model: it is installed

    return [(name, m) for name, m in model.named_modules() if isinstance(m, GradientCheckpointingLayer)]
