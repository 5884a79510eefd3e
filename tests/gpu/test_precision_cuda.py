"""Every precision policy's step on CUDA equals FP32 within the CPU tests' tolerances;
an FP16 overflow is skipped and the dynamic scale halved on the GPU."""

from __future__ import annotations

import pytest
import torch

from rayeffi.techniques.base import Technique
from rayeffi.precision import PRECISIONS
from rayeffi.worker.step import train_step

from cuda_problems import mlp_problem, parts_on

STEPS = 5


def _losses(device, precision):
    model, inputs, targets = mlp_problem()
    parts = parts_on(device, precision, model)
    inputs, targets = inputs.to(device), targets.to(device)
    losses = torch.stack([train_step(parts, inputs, targets) for _ in range(STEPS)])
    return losses.cpu(), parts


@pytest.mark.parametrize(("policy", "options"), [
    ("bf16", {}), ("fp16", {"loss_scale": "dynamic"}), ("fp16", {"loss_scale": 1024.0}), ("fp16-master", {}),
])
def test_every_policy_trains_like_fp32_on_cuda(cuda, policy, options):
    reference, _ = _losses(cuda, PRECISIONS["fp32"]())
    got, parts = _losses(cuda, PRECISIONS[policy](**options))
    torch.testing.assert_close(got, reference, rtol=2e-2, atol=reference.abs().max().item() * 2e-2)
    assert parts.precision.device_type == cuda.type  # autocast and GradScaler follow the model's device
    if policy == "fp16-master":  # the FP32 masters live beside the FP16 weights, on the GPU
        masters = parts.optimizer.param_groups[0]["params"]
        assert all(p.device == parts.strategy.device and p.dtype == torch.float32 for p in masters)
        assert any(p.dtype == torch.float16 for p in parts.model.parameters())


class Overflow(Technique):
    """Makes the first step's loss infinite."""

    def __init__(self):
        self.calls = 0

    def loss(self, loss, outputs, inputs, targets, extras):
        self.calls += 1
        return loss * float("inf") if self.calls == 1 else loss


@pytest.mark.parametrize("policy", ["fp16", "fp16-master"])
def test_an_fp16_overflow_is_skipped_and_the_scale_halved_on_cuda(cuda, policy):
    model, inputs, targets = mlp_problem()
    parts = parts_on(cuda, PRECISIONS[policy](loss_scale="dynamic"), model, techniques=[Overflow()], momentum=0.9)
    before = [p.detach().clone() for p in parts.model.parameters()]
    train_step(parts, inputs.to(cuda), targets.to(cuda))
    metrics = parts.precision.metrics()
    assert metrics["skipped_steps"] == 1
    assert metrics["loss_scale"] == 2.0**15  # 2^16 halved
    assert all(torch.equal(a, b) for a, b in zip(before, parts.model.parameters()))  # the step was skipped
    train_step(parts, inputs.to(cuda), targets.to(cuda))
    assert all(torch.isfinite(p).all() for p in parts.model.parameters())
