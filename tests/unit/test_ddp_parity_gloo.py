"""The data-parallel strategy + train_step on 2 gloo processes == one process on the global batch.

Pure torch.multiprocessing, no Ray: this pins the strategy itself; tests/ray repeats
the check through a real Ray Train run.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayeffi.parallel import DataParallel
from rayeffi.precision import Precision
from rayeffi.worker.build import assemble
from rayeffi.worker.step import train_step
from helpers.gloo import end_rank, free_port, tiny_batches, tiny_model

STEPS, GLOBAL_BATCH = 6, 32


def _model():
    return tiny_model()


def _data():
    return tiny_batches(STEPS, GLOBAL_BATCH)


def _train(rank, world_size, port, out):
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    strategy = DataParallel(rank, world_size)
    parts = assemble(_model(), strategy, Precision(), lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    model = parts.model
    inputs, targets = _data()
    share = GLOBAL_BATCH // world_size
    for step in range(STEPS):
        rows = slice(rank * share, (rank + 1) * share)
        train_step(parts, inputs[step, rows], targets[step, rows])
    if rank == 0:
        torch.save(strategy.unwrap(model).state_dict(), out)
    if world_size > 1:
        end_rank()


def test_two_gloo_workers_match_one_process(tmp_path):
    _train(0, 1, None, tmp_path / "single.pt")
    mp.spawn(_train, args=(2, free_port(), tmp_path / "ddp.pt"), nprocs=2)
    single, ddp = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=0, atol=1e-5)
    assert any((single[name] != _model().state_dict()[name]).any() for name in single)  # it did train


def _dsd_rank(rank, world_size, port, out_dir):
    from rayeffi.techniques.dsd.config import DsdConfig
    from rayeffi.techniques import DenseSparseDense

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    strategy = DataParallel(rank, world_size)
    technique = DenseSparseDense(DsdConfig(rounds=[0.5], dense_epochs=1, sparse_epochs=1, redense_epochs=0))
    parts = assemble(_model(), strategy, Precision(), lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
                     [technique])
    model, optimizer = parts.model, parts.optimizer
    inputs, targets = _data()
    share = GLOBAL_BATCH // world_size
    rows = slice(rank * share, (rank + 1) * share)  # each rank its own data
    for epoch in range(2):
        technique.on_epoch_start(epoch, model, optimizer)
        for step in range(STEPS):
            train_step(parts, inputs[step, rows], targets[step, rows])
    torch.save({"masks": technique.masks, "model": strategy.unwrap(model).state_dict()}, out_dir / f"rank{rank}.pt")
    end_rank()


def test_dsd_masks_are_identical_on_every_rank(tmp_path):
    mp.spawn(_dsd_rank, args=(2, free_port(), tmp_path), nprocs=2)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert rank0["masks"].keys() == rank1["masks"].keys() and rank0["masks"]
    for name in rank0["masks"]:
        assert torch.equal(rank0["masks"][name], rank1["masks"][name])
        assert (rank0["model"][name.replace("module.", "")][~rank0["masks"][name]] == 0).all()
