"""Which weight matrices of a model DSD prunes, and why each other one stays dense.

Han et al. prune every weight matrix of the network ("DSD", ICLR 2017: CNNs, RNNs and
LSTMs alike). A model's matrices live in several kinds of layer:

===============================  ===================================  ===========
layer                            matrices                             mask blocks
===============================  ===================================  ===========
Linear, Conv1d/2d/3d, ConvT      ``weight``                           1
``Conv1D`` (Hugging Face GPT-2)  ``weight`` (``[in, out]``)           1
MultiheadAttention               ``in_proj_weight`` (or q/k/v), and   3 (q, k, v)
                                 ``out_proj`` (a Linear)
RNN / LSTM / GRU                 ``weight_ih_l*``, ``weight_hh_l*``,  1 / 4 / 3
                                 ``weight_hr_l*`` (projections)       (per gate)
Embedding, EmbeddingBag          ``weight``, only with                1
                                 ``prune_embeddings``
===============================  ===================================  ===========

A *mask block* is a run of rows pruned to the target on its own: an LSTM's
``weight_ih`` stacks its four gates' matrices, and pruning them as one would let a
gate with small weights lose most of them. Hugging Face's ``Conv1D`` is recognised by
its class name and 2-D ``weight``, so the package never imports ``transformers``.

Tied parameters (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) are one
tensor: pruned once under the first name, the others listed as tied; a tie with an
embedding follows the embedding's rule. Every other parameter of two or more
dimensions is listed as dense with its reason, so nothing is skipped silently.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_GATES = {"LSTM": 4, "GRU": 3}


@dataclass
class PruningPlan:
    """``prunable``: name -> weight; ``blocks``: name -> mask blocks; ``dense``: name -> reason."""

    prunable: dict[str, nn.Parameter] = field(default_factory=dict)
    blocks: dict[str, int] = field(default_factory=dict)
    dense: dict[str, str] = field(default_factory=dict)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def layer_matrices(module: nn.Module) -> list[tuple[str, int, str | None]]:
    """``(parameter name, mask blocks, dense reason or None)`` of one module's own weight matrices."""
    if isinstance(module, (nn.Linear, *_CONV)) or (
        type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None
        and module.weight.dim() == 2
    ):
        return [("weight", 1, None)]
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return [("weight", 1, "embedding (set dsd.prune_embeddings: true to prune it)")]
    if isinstance(module, nn.MultiheadAttention):
        names = ["in_proj_weight"] if module.in_proj_weight is not None else ["q_proj_weight", "k_proj_weight",
                                                                              "v_proj_weight"]
        return [(name, 3 if name == "in_proj_weight" else 1, None) for name in names]
    if isinstance(module, nn.RNNBase):
        gates = _GATES.get(module.mode, 1)
        return [(name, 1 if name.startswith("weight_hr") else gates, None)
                for name, _ in module.named_parameters(recurse=False) if name.startswith("weight_")]
    return []


def plan_pruning(model: nn.Module, skip: tuple[str, ...] = (), skip_first_conv: bool = True,
                 prune_embeddings: bool = False) -> PruningPlan:
    """Every weight matrix of ``model``: prunable (with its mask blocks) or dense with the reason."""
    plan = PruningPlan()
    owner: dict[int, str] = {}  # id(parameter) -> first name, to find tied parameters
    first_conv_seen = False
    for module_name, module in model.named_modules(remove_duplicate=False):
        for local_name, blocks, reason in layer_matrices(module):
            name, weight = _join(module_name, local_name), getattr(module, local_name)
            if id(weight) in owner:
                first = owner[id(weight)]
                if name != first and name not in plan.dense:
                    plan.dense[name] = f"tied to {first} (pruned once, under that name)" if first in plan.prunable \
                        else f"tied to {first}"
                continue
            owner[id(weight)] = name
            if isinstance(module, _CONV) and not first_conv_seen:
                first_conv_seen = True
                if skip_first_conv:
                    reason = "first convolution (dsd.skip_first_conv)"
            if reason and reason.startswith("embedding") and prune_embeddings:
                reason = None
            if reason is None and any(fnmatch.fnmatchcase(name, pattern) for pattern in skip):
                reason = "matches dsd.skip"
            if reason is None:
                plan.prunable[name], plan.blocks[name] = weight, blocks
            else:
                plan.dense[name] = reason
    for module_name, module in model.named_modules():
        for local_name, parameter in module.named_parameters(recurse=False):
            name = _join(module_name, local_name)
            if parameter.dim() >= 2 and id(parameter) not in owner and name not in plan.dense:
                owner[id(parameter)] = name
                plan.dense[name] = (f"free parameter of {type(module).__name__}, not a layer's weight "
                                    "(a position embedding or the like)")
    return plan
