"""The model contract, checked on the driver before Ray starts.

``forward`` receives one tensor ``[N, num_features]``: float32 features, or int64
token ids for a model that starts with an embedding (``model.input_dtype``: ``auto``
finds the first layer holding parameters; an ``nn.Embedding`` there means token ids,
so a Hugging Face BERT or GPT-2 classifier built from a config works as it is), plus
the named inputs its forward takes (``attention_mask``, ...: ``models/inputs.py``). It
returns the logits ``[N, num_classes]``, or an object/dict with ``logits`` (a Hugging
Face ``ModelOutput``), unwrapped by ``task.logits_of``.

:func:`dry_run` builds nothing itself: it runs a 2-row forward and backward of a built
model on real rows of the data, under the stage's autocast, and turns every breach of
the contract into one ``UserError`` naming the model and the fix.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from rayeffi.errors import UserError
from rayeffi.models.inputs import call_model, forward_parameters
from rayeffi.task import CLASSIFICATION, Task, check_user_scores, logits_of


def first_layer(model: nn.Module) -> nn.Module | None:
    """The first module (in registration order) that holds parameters of its own."""
    for module in model.modules():
        if next(module.parameters(recurse=False), None) is not None:
            return module
    return None


def wants_token_ids(model: nn.Module, input_dtype: str = "auto") -> bool:
    if input_dtype != "auto":
        return input_dtype == "int64"
    return isinstance(first_layer(model), (nn.Embedding, nn.EmbeddingBag))


def _to_token_ids(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if args:
        args = (_as_ids(args[0]), *args[1:])
    if "input_ids" in kwargs:  # a Hugging Face model called with named inputs (models/inputs.py)
        kwargs = {**kwargs, "input_ids": _as_ids(kwargs["input_ids"])}
    return args, kwargs


def _as_ids(inputs):
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
        inputs = inputs.round().long()  # features travel as float32; token ids are exact up to 2^24
    return inputs


def _as_images(image_shape: tuple[int, int, int]):
    """A pre-hook viewing ``pixel_values`` rows ``[N, C*H*W]`` as ``[N, C, H, W]``."""
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        pixels = kwargs.get("pixel_values")
        if isinstance(pixels, torch.Tensor) and pixels.dim() == 2:
            kwargs = {**kwargs, "pixel_values": pixels.reshape(len(pixels), *image_shape)}
        return args, kwargs
    return hook


def attach_input_cast(model: nn.Module, input_dtype: str = "auto",
                      image_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """Make ``model`` take the float32 feature rows rayeffi feeds it, casting to int64 where it wants ids,
    and viewing them as images where its forward takes ``pixel_values`` (``models/inputs.py``).

    Forward pre-hooks on the model itself: the state dict keys stay the model's own, and
    DDP, evaluation and the distillation teachers all call through them.
    """
    if wants_token_ids(model, input_dtype):
        model.register_forward_pre_hook(_to_token_ids, with_kwargs=True)
    if image_shape is not None and "pixel_values" in forward_parameters(model):
        model.register_forward_pre_hook(_as_images(tuple(image_shape)), with_kwargs=True)
    return model


def _failure(name: str, what: str, exc: BaseException, inputs: torch.Tensor | None = None) -> UserError:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    fix = "fix the model's forward, or pick another model"
    if inputs is not None and not inputs.is_floating_point() and ("dtype" in message or "Long" in message):
        fix = ("the data are int64 token ids but the model's first layer takes floats: give a model that starts "
               "with an embedding (e.g. model.name: lm)")
    elif "Long" in message or "indices" in message or "scalar type" in message:
        fix = "it expects token ids: set model.input_dtype: int64"
    elif "index out of range" in message:
        fix = "a token id is outside its embedding: raise the vocabulary size (model.kwargs) above the largest feature"
    elif "primitive descriptor" in message:
        fix = "use precision: fp32 (this layer has no reduced-precision kernel on this device)"
    return UserError(f"model {name}: {what} on 2 rows of the data failed ({message}): {fix}")


_WHAT = {
    "classification": "one score per class",
    "language_modeling": "a score per vocabulary entry at every position",
    "token_classification": "a score per class at every position",
    "regression": "one value per target",
}


def dry_run(model: nn.Module, name: str, inputs: torch.Tensor, targets: torch.Tensor, num_classes: int,
            autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
            task: Task = CLASSIFICATION, extras: dict[str, torch.Tensor] | None = None) -> None:
    """Forward + task loss + backward on a few real rows in training mode; raise UserError on a breach.

    ``extras``: the rows' named inputs (``input.NAME`` columns), passed as the step passes them.

    Runs on a copy's state: the running statistics (BatchNorm) are restored afterwards.
    """
    buffers = {key: value.clone() for key, value in model.state_dict().items()}
    try:
        with autocast():
            try:
                outputs = call_model(model, inputs, extras)
            except Exception as exc:  # any forward failure is the user's model: one line, not a traceback
                raise _failure(name, "forward", exc, inputs) from None
            try:
                logits = logits_of(outputs)
            except TypeError as exc:
                raise UserError(f"model {name}: {exc}") from None
            expected = task.output_shape(inputs, num_classes)
            if tuple(logits.shape) != expected and not (task.name == "regression" and logits.numel() == targets.numel()):
                raise UserError(
                    f"model {name}: forward returned logits of shape {list(logits.shape)} for inputs of shape "
                    f"{list(inputs.shape)}; task {task.name} needs {list(expected)} ({_WHAT[task.name]}): fix the "
                    "model's head (num_classes is passed to the builder)"
                )
            if not torch.isfinite(logits.float()).all():
                raise UserError(f"model {name}: forward returned non-finite logits on real rows: check its "
                                "initialisation and normalisation")
            check_user_scores(task, logits, targets)  # the recipe's task.loss and task.metrics, if any
            loss = task.loss(logits, targets)
        try:
            loss.backward()
        except Exception as exc:
            raise _failure(name, "backward", exc) from None
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(buffers)
