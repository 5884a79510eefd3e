"""DSD and distillation in one stage (``techniques: [dsd, distill]``): a teacher distils into
the student while DSD prunes it. Built from a recipe through the real worker build, two
gloo ranks end with the same student and the same masks as one process on the global
batch, and the pruned weights stay exact zeros at every step of the sparse phase while
the KD term trains."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayeffi.checkpoint import save_atomic
from rayeffi.data.info import DatasetInfo
from rayeffi.models import build_model
from rayeffi.parallel import DataParallel
from rayeffi.recipe import validate_recipe
from rayeffi.recipe.sections import ModelConfig
from rayeffi.worker.build import build_worker
from rayeffi.worker.step import train_step
from helpers.gloo import end_rank, free_port

INFO = DatasetInfo(num_features=64, num_classes=10, image_shape=(1, 8, 8), num_train=64, num_val=16)
STEPS, GLOBAL_BATCH = 4, 32
TEACHER = {"name": "cnn", "channels": [4, 8]}


def _stage(teacher_path):
    return validate_recipe({
        "model": {"name": "mlp", "hidden_sizes": [32]},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "data": {"batch_size": GLOBAL_BATCH},
        "stages": [{
            "name": "sparse_kd", "kind": "train",
            "techniques": [
                {"name": "dsd", "rounds": [0.5], "dense_epochs": 1, "sparse_epochs": 2, "redense_epochs": 1},
                {"name": "distill", "teachers": [{"checkpoint": str(teacher_path), "model": TEACHER}],
                 "temperature": 3.0, "alpha": 0.7},
            ],
        }],
    }).stages[0]


def _teacher(path):
    torch.manual_seed(5)
    teacher = build_model(ModelConfig(**TEACHER), INFO)
    save_atomic({"model": teacher.state_dict()}, path)


def _data():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(STEPS, GLOBAL_BATCH, 64, generator=generator)
    return inputs, torch.randint(0, 10, (STEPS, GLOBAL_BATCH), generator=generator)


def _train(rank, world_size, port, teacher_path, out):
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    stage = _stage(teacher_path)
    parts, scheduler = build_worker(stage, INFO, DataParallel(rank, world_size))
    dsd, distill = parts.techniques
    inputs, targets = _data()
    share = GLOBAL_BATCH // world_size
    rows = slice(rank * share, (rank + 1) * share)
    zeros_held, kd_losses = [], []
    for epoch in range(stage.total_epochs):
        for technique in parts.techniques:
            technique.on_epoch_start(epoch, parts.model, parts.optimizer)
        for step in range(STEPS):
            train_step(parts, inputs[step, rows], targets[step, rows])
            if dsd.masks is not None:  # sparse phase: every pruned weight is exactly zero after the step
                zeros_held.append(all(bool((dsd.weights[name][~mask] == 0).all()) for name, mask in dsd.masks.items()))
        metrics = distill.metrics()
        kd_losses.append(metrics["kd_soft_loss"])
        scheduler.step()
    torch.save({"model": parts.strategy.unwrap(parts.model).state_dict(), "masks": dsd.final_sparse_state()["masks"],
                "zeros_held": zeros_held, "kd_losses": kd_losses, "lrs": scheduler.get_last_lr()},
               f"{out}-rank{rank}.pt")
    for technique in reversed(parts.techniques):
        technique.teardown()
    if world_size > 1:
        end_rank()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("prune-distill")
    teacher_path = tmp_path / "teacher.pt"
    _teacher(teacher_path)
    _train(0, 1, None, teacher_path, tmp_path / "single")
    mp.spawn(_train, args=(2, free_port(), teacher_path, tmp_path / "ddp"), nprocs=2)
    return [torch.load(tmp_path / name) for name in ("single-rank0.pt", "ddp-rank0.pt", "ddp-rank1.pt")]


def test_two_gloo_ranks_prune_and_distil_like_one_process(runs):
    single, *ranks = runs
    for ddp in ranks:
        for name, value in single["model"].items():
            torch.testing.assert_close(ddp["model"][name], value, rtol=0, atol=1e-5)
        assert ddp["masks"].keys() == single["masks"].keys()
        assert all(torch.equal(ddp["masks"][name], mask) for name, mask in single["masks"].items())
        assert ddp["kd_losses"] == pytest.approx(single["kd_losses"], abs=1e-5)


def test_masks_hold_exact_zeros_while_the_kd_loss_trains(runs):
    single = runs[0]
    assert len(single["zeros_held"]) == 2 * STEPS and all(single["zeros_held"])  # both sparse epochs, every step
    sparsity = [float((~mask).float().mean()) for mask in single["masks"].values()]
    assert sparsity == pytest.approx([0.5] * len(sparsity), abs=0.02)
    kd = single["kd_losses"]  # dense, sparse, sparse, re-dense: the student keeps closing on the teacher
    assert kd[-1] < kd[0]
