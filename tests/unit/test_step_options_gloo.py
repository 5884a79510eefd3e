"""The step options under DDP on 2 gloo processes against one process (no Ray):

- accumulation: each rank's 16 rows as 2 micro-batches of 8 (the first under ``no_sync``),
  with DSD masks, equals one process stepping on the 32-row batch: 1e-5 in FP32; with fp16
  loss scaling the scale evolves identically (it acts once per optimizer step) and the weights
  agree to 1e-4, because autocast rounds each backward's weight gradient to FP16 (a 2^-11
  relative step) and two micro-batches round two partial sums where one batch rounds one
  (measured: 3.7e-8 apart in FP32, 6e-5 in fp16, in one process with no DDP at all);
  DDP all-reduces once per step;
- clipping: the weights and the pre-clip norms equal plain torch with
  ``torch.nn.utils.clip_grad_norm_`` on the global batch in one process;
- a per-step warm-up: the learning rate of every step, on every rank.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from rayeffi.parallel import DataParallel
from rayeffi.recipe import OptimizerConfig
from rayeffi.techniques.dsd.config import DsdConfig
from rayeffi.techniques import DenseSparseDense
from rayeffi.precision import PRECISIONS
from rayeffi.worker.build import assemble
from rayeffi.worker.optim import build_scheduler, step_lr_factor
from rayeffi.worker.step import train_step
from helpers.gloo import end_rank, free_port, tiny_batches, tiny_model

STEPS, GLOBAL_BATCH, EPOCHS, MAX_GRAD_NORM = 4, 32, 2, 0.05
TOLERANCE = {"fp32": 1e-5, "fp16": 1e-4}
"""Accumulated vs whole-batch weights (the module docstring says why fp16's is looser)."""
SCHEDULE = OptimizerConfig(lr=0.2, schedule={"name": "cosine", "warmup_steps": 3})


def _model():
    return tiny_model()


def _data():
    return tiny_batches(STEPS, GLOBAL_BATCH)


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _accumulate(rank, world_size, accumulate_steps, policy):
    """DSD (dense epoch, then 50% sparse) under ``policy``; returns the weights, the all-reduces
    made and the loss scale (fp16: it grows every 3 clean steps)."""
    strategy = DataParallel(rank, world_size)
    technique = DenseSparseDense(DsdConfig(rounds=[0.5], dense_epochs=1, sparse_epochs=1, redense_epochs=0))
    precision = PRECISIONS[policy](init_scale=1024.0, growth_interval=3) if policy == "fp16" else PRECISIONS[policy]()
    parts = assemble(_model(), strategy, precision, _sgd, [technique])
    parts.accumulate_steps = accumulate_steps
    all_reduces = [0]
    if world_size > 1:
        def counting_hook(state, bucket):
            all_reduces[0] += 1
            return allreduce_hook(state, bucket)
        parts.model.register_comm_hook(None, counting_hook)
    inputs, targets = _data()
    share = GLOBAL_BATCH // world_size
    rows = slice(rank * share, (rank + 1) * share)
    for epoch in range(EPOCHS):
        technique.on_epoch_start(epoch, parts.model, parts.optimizer)
        for step in range(STEPS):
            train_step(parts, inputs[step, rows], targets[step, rows])
    return {"weights": strategy.unwrap(parts.model).state_dict(), "all_reduces": all_reduces[0],
            "masks": technique.masks, "metrics": precision.metrics()}


def _clip(rank, world_size):
    parts = assemble(_model(), DataParallel(rank, world_size), PRECISIONS["fp32"](), _sgd)
    parts.max_grad_norm = MAX_GRAD_NORM
    inputs, targets = _data()
    share = GLOBAL_BATCH // world_size
    for step in range(STEPS):
        train_step(parts, inputs[step, rank * share:(rank + 1) * share], targets[step, rank * share:(rank + 1) * share])
    return {"weights": parts.strategy.unwrap(parts.model).state_dict(), "norms": torch.stack(parts.grad_norms)}


def _warmup_lrs(rank, world_size):
    parts = assemble(_model(), DataParallel(rank, world_size), PRECISIONS["fp32"](),
                     lambda model: torch.optim.SGD(model.parameters(), lr=SCHEDULE.lr))
    parts.scheduler = build_scheduler(SCHEDULE, parts.optimizer, EPOCHS, steps_per_epoch=STEPS)
    inputs, targets = _data()
    share = GLOBAL_BATCH // world_size
    lrs = []
    for _ in range(EPOCHS):
        for step in range(STEPS):
            lrs.append(parts.optimizer.param_groups[0]["lr"])  # the lr this step runs at
            train_step(parts, inputs[step, rank * share:(rank + 1) * share],
                       targets[step, rank * share:(rank + 1) * share])
    return lrs


def _rank(rank, world_size, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    results = {**{policy: _accumulate(rank, world_size, 2, policy) for policy in TOLERANCE}, "clip": _clip(rank, world_size),
               "lrs": _warmup_lrs(rank, world_size)}  # one process group for all: spawning costs seconds
    torch.save(results, out_dir / f"rank{rank}.pt")
    end_rank()


def _plain_torch_clipped():
    """One process, no rayeffi: backward, clip_grad_norm_, step."""
    model, (inputs, targets) = _model(), _data()
    optimizer = _sgd(model)
    norms = []
    for step in range(STEPS):
        torch.nn.functional.cross_entropy(model(inputs[step]), targets[step]).backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM))
        optimizer.step()
        optimizer.zero_grad()
    return model.state_dict(), torch.stack(norms)


def test_step_options_under_ddp_match_one_process(tmp_path):
    mp.spawn(_rank, args=(2, free_port(), tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]

    for policy, tolerance in TOLERANCE.items():
        whole_batch = _accumulate(0, 1, 1, policy)
        for rank in ranks:
            accumulated = rank[policy]
            assert accumulated["all_reduces"] == EPOCHS * STEPS  # the inner micro-batch ran under no_sync
            for name, weight in whole_batch["weights"].items():
                torch.testing.assert_close(accumulated["weights"][name], weight, rtol=0, atol=tolerance)
            for name, mask in whole_batch["masks"].items():
                assert torch.equal(accumulated["masks"][name], mask)
                assert (accumulated["weights"][name.replace("module.", "")][~mask] == 0).all()
            assert accumulated["metrics"] == whole_batch["metrics"]  # loss scale, skipped steps: per optimizer step
        first_mask = next(iter(whole_batch["masks"].values()))
        assert 0 < first_mask.float().mean() < 1  # DSD pruned

    weights, norms = _plain_torch_clipped()
    assert (norms > MAX_GRAD_NORM).all()  # every step clipped
    for rank in ranks:
        torch.testing.assert_close(rank["clip"]["norms"], norms, rtol=1e-5, atol=1e-6)
        for name, weight in weights.items():
            torch.testing.assert_close(rank["clip"]["weights"][name], weight, rtol=0, atol=1e-5)

    total = EPOCHS * STEPS
    expected = [SCHEDULE.lr * step_lr_factor(SCHEDULE.schedule, step, total) for step in range(total)]
    assert expected[:3] == [SCHEDULE.lr / 3, SCHEDULE.lr * 2 / 3, SCHEDULE.lr]  # the warm-up
    for rank in ranks:
        assert rank["lrs"] == expected
