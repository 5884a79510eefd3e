"""Which device a worker computes on, and moving batches and states to and from it.

Pure torch (no Ray): the Ray Train loop, the parameter server's gradient worker, the
teacher-logit cache and the GPU test tier all use it. Ray may assign GPU ids to a worker
on a machine where CUDA is absent (a local Ray started with logical GPUs, a driver or node
without drivers): the worker then computes on the CPU and says so, instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    note: str
    """What happened, for the summary: ``cuda:0``, ``cpu``, or why GPUs asked for were not used."""

    def summary(self, gpu_ids: list = ()) -> dict[str, Any]:
        return {"device": str(self.device), "gpu_ids": [str(i) for i in gpu_ids], "note": self.note}


def choose_device(use_gpu: bool, assigned: torch.device | None = None) -> DeviceChoice:
    """``assigned``: the device Ray Train picked (``ray.train.torch.get_device()``), if any."""
    if use_gpu and torch.cuda.is_available():
        device = assigned if assigned is not None and assigned.type == "cuda" else torch.device(
            "cuda", torch.cuda.current_device())
        return DeviceChoice(device, str(device))
    if use_gpu:
        return DeviceChoice(torch.device("cpu"), "cpu: GPUs were asked for but CUDA is not available here")
    return DeviceChoice(torch.device("cpu"), "cpu")


def to_device(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One host-to-device copy; pinned and asynchronous on CUDA (the step's first kernel waits for it)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, dtype, non_blocking=True)
    return tensor.to(device, dtype)


def to_cpu(state: Any) -> Any:
    """A nested state (dicts, lists, tensors) with every tensor copied to the CPU, for a checkpoint
    that loads on any device (``torch.load(map_location=...)`` then places it)."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {key: to_cpu(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(value) for value in state)
    return state
