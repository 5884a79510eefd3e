"""Reference models and the one place a recipe's ``model.name`` becomes an ``nn.Module``."""

from __future__ import annotations

import contextlib
import inspect
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from rayeffi.data.info import DatasetInfo
from rayeffi.errors import UserError
from rayeffi.task import CLASSIFICATION, Task, resolve_function
from rayeffi.models.contract import attach_input_cast, dry_run
from rayeffi.models.convnet import ConvNet
from rayeffi.models.lm import TransformerLM
from rayeffi.models.lstm_lm import LSTMLM
from rayeffi.models.mlp import MLP

if TYPE_CHECKING:
    # pure configuration (pydantic): annotations only, so the step imports without pydantic
    from rayeffi.recipe.sections import ModelConfig


def _mlp(config: ModelConfig, info: DatasetInfo) -> nn.Module:
    return MLP(info.num_features, info.num_classes, config.hidden_sizes, config.dropout)


def _cnn(config: ModelConfig, info: DatasetInfo) -> nn.Module:
    if info.image_shape is None:
        raise UserError("model 'cnn' needs images: set data.image_shape=[channels, height, width] for this dataset")
    return ConvNet(info.image_shape, info.num_classes, config.channels, dropout=config.dropout)


def _lm(config: ModelConfig, info: DatasetInfo) -> nn.Module:
    if info.vocab_size is None:
        raise UserError("model 'lm' is a language model: set task: language_modeling and give token sequences "
                        "(data.dataset: text, or Parquet with a list<int> column)")
    return TransformerLM(info.vocab_size, info.num_features, config.d_model, config.num_layers, config.num_heads,
                         config.dropout)


def _lstm_lm(config: ModelConfig, info: DatasetInfo) -> nn.Module:
    if info.vocab_size is None:
        raise UserError("model 'lstm_lm' is a language model: set task: language_modeling and give token sequences "
                        "(data.dataset: text, or Parquet with a list<int> column)")
    return LSTMLM(info.vocab_size, config.d_model, config.num_layers, config.dropout)


BUILTIN_MODELS: dict[str, Callable[[ModelConfig, DatasetInfo], nn.Module]] = {
    "mlp": _mlp, "cnn": _cnn, "lm": _lm, "lstm_lm": _lstm_lm}


def build_model(config: ModelConfig, info: DatasetInfo) -> nn.Module:
    """The model a recipe names: a built-in one, or ``module:function`` (or ``model.builder``)
    called with the data's shape."""
    if config.name in BUILTIN_MODELS:
        return BUILTIN_MODELS[config.name](config, info)
    factory = config.builder or resolve_user_model(config.name)  # builder: an object from the Python API
    kwargs = dict(config.kwargs)
    if info.vocab_size is not None:  # token data: the builder also learns the vocabulary
        kwargs.setdefault("vocab_size", info.vocab_size)
    data_args = {"num_features": info.num_features, "num_classes": info.num_classes, "image_shape": info.image_shape}
    if "vocab_size" in kwargs:
        data_args["vocab_size"] = kwargs.pop("vocab_size")
    model = factory(**_builder_arguments(factory, config.name, data_args, kwargs))
    if not isinstance(model, nn.Module):
        raise UserError(f"model.name {config.name}: returned {type(model).__name__}, not a torch.nn.Module")
    return attach_input_cast(model, config.input_dtype, info.image_shape)


def check_model(config: ModelConfig, info: DatasetInfo, rows: tuple[torch.Tensor, ...] | None = None,
                autocast_for: Callable[[nn.Module], contextlib.AbstractContextManager] | None = None,
                task: Task = CLASSIFICATION) -> nn.Module:
    """Fail on the driver, before any worker starts, if the model cannot be built or breaks the
    contract (``models/contract.py``) on ``rows`` (features, labels[, named inputs]) of the data, under the context
    ``autocast_for(model)`` returns (the stage's precision); returns the model."""
    if config.name == "cnn" and info.image_shape is None:
        raise UserError("model 'cnn' needs images: set data.image_shape=[channels, height, width] for this dataset")
    try:
        model = build_model(config, info)
    except UserError:
        raise
    except Exception as exc:  # the builder's own error, in one line
        raise UserError(f"model {config.name}: building it failed ({str(exc).strip().splitlines()[0]}): "
                        "check model.kwargs") from None
    if rows is not None:
        model.train()
        autocast = (lambda: autocast_for(model)) if autocast_for else contextlib.nullcontext
        dry_run(model, config.name, rows[0], rows[1], info.num_classes, autocast, task, *rows[2:])
    return model


def _builder_arguments(factory: Callable, name: str, data_args: dict, kwargs: dict) -> dict:
    """What a builder is called with: the data's shape (``num_features``, ``num_classes``,
    ``image_shape``, ``vocab_size``), each where its signature takes it, and every
    ``model.kwargs`` item; a kwarg it does not take is one ``UserError`` naming it."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: pass everything, as before
        return {**data_args, **kwargs}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return {**data_args, **kwargs}
    named = {key for key, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    unknown = sorted(set(kwargs) - named)
    if unknown:
        raise UserError(f"model.kwargs.{unknown[0]}: the builder {name} takes no argument {unknown[0]!r} "
                        f"(it takes: {', '.join(parameters) or 'nothing'}): fix the key or the builder's signature")
    return {**{key: value for key, value in data_args.items() if key in named}, **kwargs}


def check_builder(builder: object) -> Callable[..., nn.Module] | None:
    """A model builder object given to the Python API (``rayeffi.run(model=...)``): a function
    called like a ``module:function`` user model, or an ``nn.Module`` subclass; None passes."""
    if builder is None or isinstance(builder, type) and issubclass(builder, nn.Module):
        return builder
    if isinstance(builder, nn.Module):
        raise UserError(f"model: got an instance of {type(builder).__name__}; pass its class or a function that "
                        "builds it (every worker builds its own copy, called with num_features, num_classes, ...)")
    if isinstance(builder, type) or not callable(builder):
        what = f"class {builder.__name__}" if isinstance(builder, type) else f"an object of type {type(builder).__name__}"
        raise UserError(f"model: {what} builds no torch.nn.Module: give a function (num_features, num_classes, "
                        "**kwargs) -> nn.Module or an nn.Module subclass")
    return builder


def resolve_user_model(path: str) -> Callable[..., nn.Module]:
    """``model.name``'s ``package.module:function`` -> the builder (``task.resolve_function``)."""
    return resolve_function(path, "model.name")


__all__ = ["BUILTIN_MODELS", "ConvNet", "MLP", "TransformerLM", "build_model", "check_builder", "check_model", "dry_run", "resolve_user_model"]
