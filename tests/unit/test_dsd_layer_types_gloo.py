"""DSD masks on an LSTM and a GPT-2-style model (HF ``Conv1D`` weights, a tied head) stay exact
zeros under DDP on two gloo ranks, and the ranks end equal to one process on the global batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayeffi.data.info import DatasetInfo
from rayeffi.parallel import DataParallel
from rayeffi.recipe import validate_recipe
from rayeffi.worker.build import build_worker
from rayeffi.worker.step import train_step
from helpers.gloo import end_rank, free_port

INFO = DatasetInfo(num_features=16, num_classes=4, image_shape=None, num_train=64, num_val=16)
STEPS, GLOBAL_BATCH = 3, 16
MODELS = {"lstm": {"name": "helpers.model_families:lstm", "kwargs": {"num_steps": 4}},
          "gpt2": {"name": "helpers.model_families:tiny_gpt2"}}


def _data():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 17, (STEPS, GLOBAL_BATCH, 16), generator=generator).float()  # ids for the GPT-2 model
    return ids, ids[..., :4].argmax(-1)


def _train(rank, world_size, port, family, out):
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    stage = validate_recipe({
        "model": MODELS[family], "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "data": {"batch_size": GLOBAL_BATCH},
        "stages": [{"name": "s", "kind": "dsd", "dsd": {"rounds": [0.5], "dense_epochs": 1, "sparse_epochs": 1,
                                                         "redense_epochs": 0}}],
    }).stages[0]
    parts, _ = build_worker(stage, INFO, DataParallel(rank, world_size))
    dsd = parts.techniques[0]
    dsd.on_epoch_start(1, parts.model, parts.optimizer)
    inputs, targets = _data()
    share = GLOBAL_BATCH // world_size
    rows = slice(rank * share, (rank + 1) * share)
    held = []
    for step in range(STEPS):
        train_step(parts, inputs[step, rows], targets[step, rows])
        held.append(all(bool((dsd.weights[n][~m] == 0).all()) for n, m in dsd.masks.items()))
    torch.save({"model": parts.strategy.unwrap(parts.model).state_dict(), "masks": dsd.masks, "held": held,
                "sparsity": dsd.metrics()["sparsity"]}, f"{out}-rank{rank}.pt")
    if world_size > 1:
        end_rank()


@pytest.mark.parametrize("family", list(MODELS))
def test_masks_hold_under_ddp_and_match_one_process(family, tmp_path):
    _train(0, 1, None, family, tmp_path / "single")
    mp.start_processes(_train, args=(2, free_port(), family, tmp_path / "ddp"), nprocs=2, start_method="fork")
    single = torch.load(tmp_path / "single-rank0.pt")
    assert all(single["held"]) and single["sparsity"] == pytest.approx(0.5, abs=1e-3)
    for rank in range(2):
        ddp = torch.load(tmp_path / f"ddp-rank{rank}.pt")
        assert all(ddp["held"]) and ddp["masks"].keys() == single["masks"].keys()
        assert all(torch.equal(ddp["masks"][n], m) for n, m in single["masks"].items())
        for name, value in single["model"].items():
            torch.testing.assert_close(ddp["model"][name], value, rtol=0, atol=1e-5)
