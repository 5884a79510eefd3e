"""Data parallelism: every worker holds the whole model, gradients are all-reduced.

PyTorch DDP over the process group Ray Train sets up (gloo on CPU, nccl on GPU).
Each worker sees ``batch_size / num_workers`` rows per step; DDP averages gradients,
so a step equals a single-process step on the global batch (the parity contract).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rayeffi.parallel.base import Strategy


class DataParallel(Strategy):
    name = "data_parallel"

    def wrap(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.world_size == 1:
            return model  # local mode or one worker: nothing to synchronise
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # DDP broadcasts rank 0's parameters here, so every replica starts identical
        return DistributedDataParallel(model, device_ids=device_ids)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model

    def no_sync(self, model: nn.Module):
        # DDP skips its all-reduce; the next synchronised backward all-reduces the accumulated sum
        return model.no_sync() if isinstance(model, DistributedDataParallel) else super().no_sync(model)

    @property
    def replicas(self) -> int:
        return self.world_size

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)  # sync point
        return tensor
