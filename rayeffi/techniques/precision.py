"""The precision policy slot of the step: which dtype math runs in, and loss scaling.

Exactly one policy runs per stage. :class:`FP32` is the default and does nothing
special; mixed-precision policies (bf16 autocast, fp16 with loss scaling, the FP32
master-weight recipe of Micikevicius et al. 2018) override these hooks.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


class Precision:
    """Full FP32: forward, backward and the optimizer step all in float32."""

    name = "fp32"

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called once after the optimizer exists (e.g. to build FP32 master weights)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for the forward pass and the loss."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward pass (a loss-scaling policy multiplies ``loss`` first)."""
        loss.backward()

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Apply the gradients; return False where the step was skipped (overflow)."""
        optimizer.step()
        return True

    def metrics(self) -> dict[str, float]:
        """Telemetry added to every epoch's metrics (loss scale, skipped steps, ...)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


FP32 = Precision

PRECISIONS: dict[str, type[Precision]] = {"fp32": FP32}
"""``precision`` recipe value -> policy class. ``bf16``, ``fp16`` and ``fp16-master`` join here."""


def build_precision(name: str) -> Precision:
    return PRECISIONS[name]()
