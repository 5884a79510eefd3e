"""Loss scaling under data parallelism: every rank skips the same steps and keeps the same scale.

Two gloo processes, no Ray. Only rank 1 sees an overflowing input; DDP all-reduces
the gradients during backward, before the inf check, so rank 0 sees the inf too and
both ranks skip that step and halve the scale. fp16-master all-reduces FP16 gradients.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayeffi.parallel import DataParallel
from rayeffi.precision import PRECISIONS
from rayeffi.worker.build import assemble
from rayeffi.worker.step import train_step
from helpers.gloo import end_rank, free_port

STEPS, GLOBAL_BATCH, POISONED_STEP = 5, 16, 2


POLICIES = ("fp16", "fp16-master")


def _worker(rank, world_size, port, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    for policy in POLICIES:  # one process group for both: spawning costs seconds
        _train(rank, world_size, policy, out)
    end_rank()


def _train(rank, world_size, policy, out):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    strategy = DataParallel(rank, world_size)
    precision = PRECISIONS[policy]()
    parts = assemble(model, strategy, precision, lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    model = parts.model
    generator = torch.Generator().manual_seed(1)
    share = GLOBAL_BATCH // world_size
    stepped = []
    for step in range(STEPS):
        inputs = torch.randn(GLOBAL_BATCH, 6, generator=generator)[rank * share:(rank + 1) * share]
        if step == POISONED_STEP and rank == 1:
            inputs[0, 0] = float("inf")
        stepped.append(_step(parts, inputs))
    torch.save({
        "weights": [p.detach().float() for p in strategy.unwrap(model).parameters()],
        "stepped": stepped,
        "metrics": precision.metrics(),
    }, out / f"{policy}-rank{rank}.pt")


def _step(parts, inputs):
    before = parts.precision.telemetry.num_skipped
    train_step(parts, inputs, inputs[:, :3].argmax(dim=1))
    return parts.precision.telemetry.num_skipped == before


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp-precision")
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2)
    return out


@pytest.mark.parametrize("policy", POLICIES)
def test_ranks_skip_the_same_steps_and_stay_identical(policy, two_rank_runs):
    rank0, rank1 = (torch.load(two_rank_runs / f"{policy}-rank{r}.pt", weights_only=True) for r in (0, 1))
    expected = [step != POISONED_STEP for step in range(STEPS)]
    assert rank0["stepped"] == rank1["stepped"] == expected
    assert rank0["metrics"] == rank1["metrics"]
    assert rank0["metrics"]["skipped_steps"] == 1 and rank0["metrics"]["loss_scale"] == 2.0**15
    for a, b in zip(rank0["weights"], rank1["weights"]):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=0, atol=0)
