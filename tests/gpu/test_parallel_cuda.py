"""Strategies on CUDA equal one process on the whole batch.

Ranks: NCCL refuses two ranks on one device, so with one GPU the data-parallel test runs
2 ranks on that GPU over gloo, whose all-reduce and broadcast take CUDA tensors; the
pipeline (every schedule) and intra-layer tests need point-to-point and gather
collectives gloo does not run on CUDA tensors, so they run on NCCL, one GPU per rank,
and skip with that reason on a machine with fewer than 2 GPUs.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayeffi.parallel import DataParallel
from rayeffi.precision import FP32
from rayeffi.worker.build import assemble
from rayeffi.worker.step import train_step

from cuda_problems import needs_pydantic

STEPS, GLOBAL_BATCH, FEATURES, CLASSES = 4, 32, 16, 4
TWO_GPUS = "needs 2 GPUs: NCCL refuses two ranks on one device, and gloo has no CUDA send/recv"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _model(kind: str = "mlp"):
    torch.manual_seed(0)
    if kind == "cnn":
        from rayeffi.models import ConvNet

        return ConvNet((1, 8, 8), CLASSES, (4, 8), hidden=16)
    layers = [torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
              torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, CLASSES)]
    return torch.nn.Sequential(*layers)


def _data(num_features: int = FEATURES):
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(STEPS, GLOBAL_BATCH, num_features, generator=generator)
    return inputs, inputs[..., :CLASSES].argmax(-1)


def _optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)


def _single(kind: str, num_features: int = FEATURES):
    device = torch.device("cuda", 0)
    parts = assemble(_model(kind), DataParallel(device=device), FP32(), _optimizer)
    inputs, targets = _data(num_features)
    for s in range(STEPS):
        train_step(parts, inputs[s].to(device), targets[s].to(device))
    return {name: value.cpu() for name, value in parts.model.state_dict().items()}


def _rank(rank, world_size, port, backend, strategy_name, config_kwargs, kind, num_features, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)  # NCCL and the object collectives use the current device
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    if strategy_name == "data_parallel":
        strategy = DataParallel(rank, world_size, device)
    else:
        from rayeffi.data.info import DatasetInfo
        from rayeffi.parallel import STRATEGIES
        from rayeffi.recipe.parallel import PARALLEL_CONFIGS

        config = PARALLEL_CONFIGS[strategy_name](**config_kwargs)
        info = DatasetInfo(num_features, CLASSES, (1, 8, 8) if kind == "cnn" else None, STEPS * GLOBAL_BATCH,
                           GLOBAL_BATCH)
        strategy = STRATEGIES[strategy_name].from_config(config, rank, world_size, device, info)
    parts = assemble(_model(kind), strategy, FP32(), _optimizer)
    inputs, targets = _data(num_features)
    share = GLOBAL_BATCH // world_size
    for s in range(STEPS):
        if strategy_name == "data_parallel":
            step_inputs, step_targets = inputs[s, rank * share:(rank + 1) * share], targets[s, rank * share:(rank + 1) * share]
        else:
            step_inputs, step_targets, _ = strategy.local_batch(inputs[s].to(device), targets[s].to(device), {})
        train_step(parts, step_inputs.to(device), step_targets.to(device))
    state = strategy.training_state(parts)["model"]
    if rank == 0:
        torch.save({name: value.cpu() for name, value in state.items()}, out)
    dist.barrier()
    dist.destroy_process_group()


def _spawn(world_size, backend, strategy_name, config_kwargs, kind, num_features, out):
    mp.spawn(_rank, args=(world_size, _free_port(), backend, strategy_name, config_kwargs, kind, num_features, out),
             nprocs=world_size)
    return torch.load(out)


def _assert_equal(got, want):
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-5)


def test_data_parallel_on_cuda_equals_one_process(tmp_path):
    # one GPU: 2 ranks share it over gloo; two or more: NCCL, one GPU per rank
    backend = "nccl" if torch.cuda.device_count() >= 2 else "gloo"
    got = _spawn(2, backend, "data_parallel", {}, "mlp", FEATURES, tmp_path / "ddp.pt")
    _assert_equal(got, _single("mlp"))


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "interleaved_1f1b", "looped_bfs", "interleaved_zero_bubble",
                                      "zbv_zero_bubble", "dualpipev"])
def test_pipeline_on_nccl_equals_one_process(tmp_path, schedule):
    needs_pydantic()
    if torch.cuda.device_count() < 2:
        pytest.skip(TWO_GPUS)
    config = {"strategy": "pipeline", "num_stages": 2, "num_microbatches": 4, "schedule": schedule}
    got = _spawn(2, "nccl", "pipeline", config, "mlp", FEATURES, tmp_path / "pipeline.pt")
    _assert_equal(got, _single("mlp"))


@pytest.mark.parametrize(("kind", "config"), [
    ("mlp", {"strategy": "intra_layer", "conv": "none", "fc": "split"}),
    ("cnn", {"strategy": "intra_layer", "conv": "spatial", "fc": "none", "grid": [1, 2]}),
])
def test_intra_layer_on_nccl_equals_one_process(tmp_path, kind, config):
    needs_pydantic()
    if torch.cuda.device_count() < 2:
        pytest.skip(TWO_GPUS)
    num_features = 64 if kind == "cnn" else FEATURES
    got = _spawn(2, "nccl", "intra_layer", config, kind, num_features, tmp_path / "intra.pt")
    _assert_equal(got, _single(kind, num_features))
