"""A pipelined ResNet-style BatchNorm CNN == one process accumulating over the same micro-batches.

BatchNorm in a pipeline normalises each micro-batch (GPipe, Huang et al. 2019, sec. 2.2),
so the single-process reference splits every batch into the same M micro-batches and
accumulates their gradients. Losses, parameters and running statistics agree at 1e-5 in
FP32, and the statistics stay finite: the stages' shapes come from an eval-mode forward
of real rows, and ``balance: time`` measures on a copy of the buffers.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayeffi.data.info import DatasetInfo
from rayeffi.parallel import Pipeline
from rayeffi.recipe.pipeline import PipelineConfig
from rayeffi.precision import Precision
from rayeffi.worker.build import assemble
from rayeffi.worker.step import eval_step, train_step
from helpers.gloo import end_rank, free_port
from helpers.model_families import resnet_bn

STEPS, GLOBAL_BATCH, FEATURES, CLASSES, MICROBATCHES = 3, 16, 16, 4, 2


def _model():
    torch.manual_seed(0)
    return resnet_bn(FEATURES, CLASSES, image_shape=(1, 4, 4), channels=4, num_blocks=2)


def _data():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(STEPS, GLOBAL_BATCH, FEATURES, generator=generator) * 2 + 1
    return inputs, inputs[..., :CLASSES].argmax(-1)


def _optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _single():
    model = _model()
    optimizer = _optimizer(model)
    inputs, targets = _data()
    losses = []
    for s in range(STEPS):
        total = 0.0
        for x, y in zip(inputs[s].chunk(MICROBATCHES), targets[s].chunk(MICROBATCHES)):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            (loss / MICROBATCHES).backward()
            total += loss.item() / MICROBATCHES
        optimizer.step()
        optimizer.zero_grad()
        losses.append(total)
    return losses, model.state_dict()


def _rank(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        info = DatasetInfo(FEATURES, CLASSES, (1, 4, 4), STEPS * GLOBAL_BATCH, GLOBAL_BATCH)
        config = PipelineConfig(num_stages=2, num_microbatches=MICROBATCHES, schedule="1f1b", balance="time")
        strategy = Pipeline(rank, world_size, torch.device("cpu"), config, info)
        parts = assemble(_model(), strategy, Precision(), _optimizer)
        inputs, targets = _data()
        losses = [train_step(parts, inputs[s], targets[s]).item() for s in range(STEPS)]
        parts.model.eval()
        evaluated = eval_step(parts, inputs[0], targets[0]).float()
        full = strategy.training_state(parts)["model"]
        if rank == 0:
            torch.save({"losses": losses, "model": full, "eval": evaluated}, out_dir / "pipeline.pt")
        end_rank()
    finally:
        dist.destroy_process_group()


def test_pipelined_batchnorm_cnn_matches_one_process(tmp_path):
    mp.start_processes(_rank, args=(2, free_port(), tmp_path), nprocs=2, start_method="fork")
    single_losses, single = _single()
    result = torch.load(tmp_path / "pipeline.pt")
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(single_losses), rtol=0, atol=1e-5)
    assert result["model"].keys() == single.keys()
    for name in single:  # weights and BatchNorm running statistics alike
        torch.testing.assert_close(result["model"][name].float(), single[name].float(), rtol=0, atol=1e-5)
    stats = [v for k, v in result["model"].items() if "running_" in k]
    assert stats and all(torch.isfinite(v).all() for v in stats)
    assert result["model"]["2.num_batches_tracked"] == STEPS * MICROBATCHES
    assert torch.isfinite(result["eval"]).all()
