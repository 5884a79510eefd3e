"""The baseline: the same model, data and batch trained with plain PyTorch DDP.

``torch.multiprocessing`` + gloo, data already in memory as tensors, one thread per
process (as Ray Train gives each 1-CPU worker). No Ray anywhere.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from rayeffi.bench.ranks import end_rank, free_port, run_ranks
from rayeffi.data.info import DatasetInfo
from rayeffi.data.synthetic import synthetic_arrays
from rayeffi.models import build_model
from rayeffi.recipe.models import StageConfig
from rayeffi.worker.optim import build_optimizer


def _worker(rank: int, world_size: int, port: int, stage: StageConfig, info: DatasetInfo, queue) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    features, labels = synthetic_arrays(stage.data.synthetic, stage.data.synthetic.num_samples, stage.seed, "train")
    inputs, targets = torch.from_numpy(features[rank::world_size]), torch.from_numpy(labels[rank::world_size])
    torch.manual_seed(stage.seed)
    model = DistributedDataParallel(build_model(stage.model, info))
    optimizer = build_optimizer(stage.optimizer, model)
    batch = stage.data.batch_size // world_size
    epoch_seconds = []
    for _ in range(stage.total_epochs):
        order = torch.randperm(len(targets))
        start = time.perf_counter()
        for first in range(0, len(order), batch):
            rows = order[first:first + batch]
            loss = torch.nn.functional.cross_entropy(model(inputs[rows]), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epoch_seconds.append(time.perf_counter() - start)
    if rank == 0:
        queue.put(epoch_seconds)
    end_rank()  # not destroy_process_group: it can deadlock on torch 2.13 (bench/ranks.py)


def native_ddp_epoch_seconds(stage: StageConfig, info: DatasetInfo, world_size: int,
                             timeout_s: float = 600.0) -> list[float]:
    """Seconds per training epoch of plain DDP, rank 0's clock."""
    queue = mp.get_context("spawn").SimpleQueue()
    run_ranks(_worker, (world_size, free_port(), stage, info, queue), world_size, timeout_s, "native DDP baseline")
    return queue.get()
