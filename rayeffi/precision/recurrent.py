"""LSTMs in FP32 under CPU autocast, with oneDNN's fast FP32 kernel.

oneDNN has no BF16/FP16 LSTM on CPUs ("could not create a primitive descriptor for the
LSTM forward propagation primitive"). Turning oneDNN off for the whole forward avoids the
error but sends every op to slower paths: a 2-layer LSTM language model's BF16 step took
3-4x its FP32 step that way. Instead each ``nn.LSTM`` runs with autocast off, on FP32
inputs, so oneDNN's FP32 LSTM computes it, while the layers around it (embedding, head)
keep the policy's dtype.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

_open = threading.local()  # the autocast-off contexts entered by the pre-hook, closed by the forward hook


def _enter_fp32(module: nn.Module, args: tuple) -> tuple:
    context = torch.autocast("cpu", enabled=False)
    context.__enter__()
    _open.__dict__.setdefault("stack", []).append(context)
    # precision cast: the input and (h0, c0) to FP32, what the module's FP32 weights compute with
    return tuple(_to_fp32(arg) for arg in args)


def _to_fp32(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float()
    if isinstance(value, tuple):
        return tuple(_to_fp32(item) for item in value)
    return value


def _leave_fp32(module: nn.Module, args: tuple, output):
    _open.stack.pop().__exit__(None, None, None)
    return output


def run_lstms_in_fp32(model: nn.Module) -> nn.Module:
    """Make every ``nn.LSTM`` of ``model`` compute in FP32 with autocast off (forward hooks; once per module).

    Outside autocast the hooks change nothing (FP32 inputs stay FP32). Returns ``model``.
    """
    for module in model.modules():
        if isinstance(module, nn.LSTM) and not getattr(module, "_rayeffi_fp32", False):
            module.register_forward_pre_hook(_enter_fp32)
            module.register_forward_hook(_leave_fp32)
            module._rayeffi_fp32 = True
    return model


def runs_in_fp32(module: nn.Module) -> bool:
    return getattr(module, "_rayeffi_fp32", False)
