"""Reference models and the one place a recipe's ``model.name`` becomes an ``nn.Module``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from torch import nn

from rayeffi.data.info import DatasetInfo
from rayeffi.errors import UserError
from rayeffi.models.convnet import ConvNet
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


BUILTIN_MODELS: dict[str, Callable[[ModelConfig, DatasetInfo], nn.Module]] = {"mlp": _mlp, "cnn": _cnn}


def build_model(config: ModelConfig, info: DatasetInfo) -> nn.Module:
    """The model a recipe names: a built-in one, or ``module:function`` called with the data's shape."""
    if config.name in BUILTIN_MODELS:
        return BUILTIN_MODELS[config.name](config, info)
    factory = resolve_user_model(config.name)
    model = factory(
        num_features=info.num_features, num_classes=info.num_classes, image_shape=info.image_shape, **config.kwargs
    )
    if not isinstance(model, nn.Module):
        raise UserError(f"model.name {config.name}: returned {type(model).__name__}, not a torch.nn.Module")
    return model


def check_model(config: ModelConfig, info: DatasetInfo) -> None:
    """Fail on the driver, before any worker starts, if the model cannot be built."""
    if config.name == "cnn" and info.image_shape is None:
        raise UserError("model 'cnn' needs images: set data.image_shape=[channels, height, width] for this dataset")
    if config.name not in BUILTIN_MODELS:
        resolve_user_model(config.name)


def resolve_user_model(path: str) -> Callable[..., nn.Module]:
    module_name, _, function_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"model.name {path}: cannot import {module_name!r} ({exc}); is it on PYTHONPATH?") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise UserError(f"model.name {path}: {module_name} has no function {function_name!r}")
    return factory


__all__ = ["BUILTIN_MODELS", "ConvNet", "MLP", "build_model", "check_model", "resolve_user_model"]
