"""Calling a model the way its ``forward`` asks: the one place rayeffi calls a model.

A batch carries the primary input (``features``: float rows, token ids, or an image's
pixels as a flat row) and, as extra columns named ``input.NAME``, the named inputs the
data supplies: ``input.attention_mask`` for every token sequence (1 = a real token, 0 =
padding), ``input.token_type_ids`` where the data has that column, and every column the
recipe maps with ``data.inputs: {argument: column}``. :func:`call_model` reads the
model's ``forward`` signature (its explicit parameters: ``**kwargs`` promises nothing),
passes each named input the forward takes by keyword, and the primary input by keyword
``input_ids`` or ``pixel_values`` where the forward has that parameter (a Hugging Face
model), else positionally. A model whose forward takes none of them is called exactly as
``model(inputs)``, as the Hugging Face Trainer calls a model with the batch's keys it takes.

The step, evaluation, the driver's dry run, the distillation teachers and the soft-label
cache all call a model through :func:`call_model`.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch
from torch import nn

from rayeffi.data.columns import INPUT_PREFIX, input_column  # noqa: F401  (re-exported)

PRIMARY_NAMES = ("input_ids", "pixel_values")
"""Keywords the primary input goes by, where the forward has one (first match wins)."""

_PARAMETERS: dict[type, tuple[str, ...]] = {}


def named_inputs(extras: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The batch's named inputs, by argument name (the ``input.`` columns of ``extras``)."""
    return {name[len(INPUT_PREFIX):]: value for name, value in (extras or {}).items() if name.startswith(INPUT_PREFIX)}


def unwrapped(model: nn.Module) -> nn.Module:
    """The module whose ``forward`` decides the call: the one inside DDP (or a compiled wrapper)."""
    while True:
        inner = getattr(model, "module", None) if isinstance(model, nn.parallel.DistributedDataParallel) else \
            getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def forward_parameters(model: nn.Module) -> tuple[str, ...]:
    """The explicit parameters of the (unwrapped) model's ``forward``, read once per class."""
    module = unwrapped(model)
    cls = type(module)
    if cls not in _PARAMETERS:
        try:
            signature = inspect.signature(module.forward)
        except (TypeError, ValueError):  # a builtin or C forward: call it with one tensor
            signature = None
        _PARAMETERS[cls] = () if signature is None else tuple(
            name for name, parameter in signature.parameters.items()
            if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))
    return _PARAMETERS[cls]


def takes_named_inputs(model: nn.Module, names) -> tuple[str, ...]:
    """Which of ``names`` (argument names) the model's forward takes."""
    parameters = forward_parameters(model)
    return tuple(name for name in names if name in parameters)


def model_kwargs(model: nn.Module, inputs: torch.Tensor, extras: Mapping[str, torch.Tensor] | None) -> dict[str, Any]:
    """The keyword arguments :func:`call_model` passes (empty: the model takes one tensor)."""
    parameters = forward_parameters(model)
    kwargs = {name: value for name, value in named_inputs(extras).items() if name in parameters}
    primary = next((name for name in PRIMARY_NAMES if name in parameters), None)
    if primary is not None and (kwargs or parameters[0] != primary):
        kwargs[primary] = inputs
    return kwargs


def call_model(model: nn.Module, inputs: torch.Tensor, extras: Mapping[str, torch.Tensor] | None = None) -> Any:
    """``model``'s output on the primary ``inputs`` and the named inputs in ``extras`` it takes.

    The primary input goes by keyword ``input_ids`` / ``pixel_values`` where the forward has
    it and anything else is passed by keyword too (the hook ``models/contract.py`` attaches
    casts ids and views pixels as images); otherwise positionally, as ``model(inputs)``.
    """
    kwargs = model_kwargs(model, inputs, extras)
    if not kwargs:
        return model(inputs)
    if any(name in kwargs for name in PRIMARY_NAMES):
        return model(**kwargs)
    return model(inputs, **kwargs)


ONE_TENSOR_STRATEGIES = ("pipeline", "intra_layer")
"""Strategies whose units pass one tensor on: a model's named inputs cannot reach them."""


def check_named_inputs(model: nn.Module, model_name: str, mapped, carried, strategy: str = "data_parallel") -> None:
    """Before Ray starts: every ``data.inputs`` argument (``mapped``) is one the model's forward
    takes, and a one-tensor strategy gets no model that takes any named input the data carry
    (``carried``); raises one ``UserError`` naming the key and the fix."""
    from rayeffi.errors import UserError

    parameters = forward_parameters(model)
    for argument in mapped:
        if argument not in parameters:
            raise UserError(f"data.inputs.{argument}: model {model_name}'s forward takes no argument {argument!r} "
                            f"(it takes: {', '.join(parameters) or 'one tensor'}): remove it from data.inputs or "
                            "name an argument it takes")
    taken = takes_named_inputs(model, carried)
    if strategy in ONE_TENSOR_STRATEGIES and taken:
        raise UserError(f"parallel.strategy {strategy}: model {model_name} takes named inputs ({', '.join(taken)}) "
                        f"but the {strategy} strategy passes one tensor between its units, so they would be "
                        "dropped: use parallel.strategy data_parallel, or a model whose forward takes one tensor")
