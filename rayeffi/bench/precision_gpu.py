"""``rayeffi bench precision --device cuda``: every precision policy on one GPU, with MFU.

Policies: FP32 with TF32 off (IEEE), FP32 with TF32 matmuls and convolutions, BF16
autocast, FP16 autocast with dynamic loss scaling, and FP16 weights with FP32 masters
(Micikevicius et al. 2018). Workloads sized to keep an H200 busy: a pre-norm transformer
block stack (4 layers, width 1024, 16 heads, 512 tokens, batch 32) and a CNN on 3x64x64
images (batch 256). Each runs rayeffi's own ``train_step``; the step's FLOPs are counted
once by ``torch.utils.flop_counter`` (forward + backward, the same maths under every
policy), and MFU is achieved FLOP/s over the H200's published dense BF16 peak (989 TFLOP/s;
FP32 and TF32 have lower peaks, so their MFU reads low by design: it is one yardstick).

Needs neither Ray nor pydantic: it runs on a bare GPU machine (``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rayeffi.models.convnet import ConvNet
from rayeffi.parallel import DataParallel
from rayeffi.precision import PRECISIONS
from rayeffi.worker.build import assemble
from rayeffi.worker.step import StepParts, train_step

PEAK_FLOPS = 989e12
"""H200 SXM dense BF16 peak (NVIDIA's published figure; 1979 with 2:4 sparsity)."""

POLICIES = (("fp32 (TF32 off)", "fp32", False), ("tf32", "fp32", True), ("bf16", "bf16", True),
            ("fp16 + loss scaling", "fp16", True), ("fp16-master", "fp16-master", True))
"""(label, precision policy, TF32 allowed for the FP32 matmuls left outside autocast)."""


class TransformerBlocks(nn.Module):
    """Pre-norm encoder layers over ``[batch, tokens, width]`` inputs, mean-pooled, classified."""

    def __init__(self, width: int = 1024, num_heads: int = 16, num_layers: int = 4, num_classes: int = 10):
        super().__init__()
        self.blocks = nn.Sequential(*[
            nn.TransformerEncoderLayer(width, num_heads, dim_feedforward=4 * width, dropout=0.0,
                                       batch_first=True, norm_first=True)
            for _ in range(num_layers)])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean(dim=1))


@dataclass(frozen=True)
class GpuWorkload:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    unit: str
    """What the throughput counts: ``tokens`` or ``images``."""
    units_per_step: int


WORKLOADS = (
    GpuWorkload("transformer 4x1024, 512 tokens", TransformerBlocks, (32, 512, 1024), "tokens", 32 * 512),
    GpuWorkload("CNN 3x64x64, conv 128-256", lambda: ConvNet((3, 64, 64), 10, (128, 256), hidden=512),
                (256, 3 * 64 * 64), "images", 256),
)


def set_tf32(enabled: bool) -> None:
    """TF32 for FP32 matmuls and convolutions (torch >= 2.9 API, else the older flags)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv"):
        matmul.fp32_precision = "tf32" if enabled else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"
    else:
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def _parts(workload: GpuWorkload, policy: str, device: torch.device) -> StepParts:
    torch.manual_seed(0)
    return assemble(workload.build(), DataParallel(device=device), PRECISIONS[policy](),
                    lambda m: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9))


def _batch(workload: GpuWorkload, device: torch.device):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(*workload.input_shape, generator=generator)
    return inputs.to(device), torch.randint(0, 10, (workload.input_shape[0],), generator=generator).to(device)


def step_flops(workload: GpuWorkload, device: torch.device) -> int:
    """FLOPs of one forward + backward (counted in FP32; autocast changes the dtype, not the count)."""
    parts = _parts(workload, "fp32", device)
    inputs, targets = _batch(workload, device)
    with FlopCounterMode(display=False) as counter:
        train_step(parts, inputs, targets)
    return counter.get_total_flops()


def median_ms(parts: StepParts, inputs, targets, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        train_step(parts, inputs, targets)
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()  # host sync: time the GPU's work, not the launch queue
        start = time.perf_counter()
        train_step(parts, inputs, targets)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run_gpu(quick: bool) -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    warmup, steps = (2, 5) if quick else (5, 30)
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}; median of {steps} steps "
          f"after {warmup}; MFU against {PEAK_FLOPS / 1e12:.0f} TFLOP/s (dense BF16 peak)")
    print(f"{'workload':32s} {'policy':20s} {'step ms':>8s} {'throughput':>18s} {'TFLOP/s':>8s} {'MFU':>6s} "
          f"{'peak GiB':>8s}")
    for workload in WORKLOADS:
        flops = step_flops(workload, device)
        inputs, targets = _batch(workload, device)
        for label, policy, tf32 in POLICIES:
            set_tf32(tf32)
            parts = _parts(workload, policy, device)
            torch.cuda.reset_peak_memory_stats(device)
            ms = median_ms(parts, inputs, targets, warmup, steps)
            achieved = flops / (ms / 1000)
            rate = f"{workload.units_per_step / (ms / 1000):,.0f} {workload.unit}/s"
            print(f"{workload.name:32s} {label:20s} {ms:8.2f} {rate:>18s} {achieved / 1e12:8.1f} "
                  f"{achieved / PEAK_FLOPS:6.1%} {torch.cuda.max_memory_allocated(device) / 2**30:8.2f}")
            del parts
            torch.cuda.empty_cache()
    set_tf32(False)
