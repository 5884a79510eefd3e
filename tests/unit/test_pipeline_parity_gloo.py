"""The pipeline strategy on gloo processes == one process on the whole batch, for every schedule.

Pure torch.multiprocessing, no Ray: each test spawns the ranks of a (data_parallel x
num_stages) mesh, runs a few optimizer steps through ``Pipeline.train_step`` and
compares losses and every parameter with single-process ``train_step`` at 1e-5.
tests/ray repeats the check through a real Ray Train run.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayeffi.data.info import DatasetInfo
from rayeffi.models import ConvNet
from rayeffi.models.transformer import TransformerClassifier
from rayeffi.parallel import DataParallel, Pipeline
from rayeffi.recipe.pipeline import SCHEDULES, PipelineConfig
from rayeffi.precision import Precision
from rayeffi.worker.build import assemble
from rayeffi.worker.step import eval_step, train_step
from helpers.gloo import end_rank, free_port

STEPS, GLOBAL_BATCH, FEATURES, CLASSES = 4, 32, 16, 4


def _model(depth=4):
    torch.manual_seed(0)
    if depth == "cnn":
        return ConvNet((1, 4, 4), CLASSES, (4, 8), hidden=16)
    if depth == "transformer":
        return TransformerClassifier(FEATURES, CLASSES, num_tokens=4, width=8, num_layers=2, num_heads=2)
    layers = [torch.nn.Linear(FEATURES, 16), torch.nn.Tanh()]
    for _ in range(depth - 2):
        layers += [torch.nn.Linear(16, 16), torch.nn.Tanh()]
    layers.append(torch.nn.Linear(16, CLASSES))
    return torch.nn.Sequential(*layers)


def _data():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(STEPS, GLOBAL_BATCH, FEATURES, generator=generator)
    return inputs, inputs[..., :CLASSES].argmax(-1)


def _optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)


def _single(depth: int, max_grad_norm: float | None = None):
    parts = assemble(_model(depth), DataParallel(), Precision(), _optimizer)
    parts.max_grad_norm = max_grad_norm
    model = parts.model
    inputs, targets = _data()
    losses = [train_step(parts, inputs[s], targets[s]).item() for s in range(STEPS)]
    evaluated = eval_step(parts, inputs[0, :20], targets[0, :20]).float()
    return losses, model.state_dict(), evaluated


def _pipeline_rank(rank, world_size, port, config_kwargs, depth, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        info = DatasetInfo(FEATURES, CLASSES, None, STEPS * GLOBAL_BATCH, GLOBAL_BATCH)
        max_grad_norm = config_kwargs.pop("max_grad_norm", None)
        strategy = Pipeline(rank, world_size, torch.device("cpu"), PipelineConfig(**config_kwargs), info)
        parts = assemble(_model(depth), strategy, Precision(), _optimizer)
        parts.max_grad_norm = max_grad_norm
        inputs, targets = _data()
        losses = []
        for s in range(STEPS):
            step_inputs, step_targets, _ = strategy.local_batch(inputs[s], targets[s], {})
            losses.append(train_step(parts, step_inputs, step_targets).item())
        # each pipeline returns its share's mean loss; the loop averages the pipelines the same way
        losses = strategy.all_reduce_sum(torch.tensor(losses)) / strategy.data_parallel_size
        full = strategy.training_state(parts)["model"]
        eval_inputs, eval_targets, _ = strategy.local_batch(inputs[0, :20], targets[0, :20], {})  # any row count
        evaluated = eval_step(parts, eval_inputs, eval_targets).float()
        evaluated = strategy.all_reduce_sum(evaluated)
        if rank == 0:
            torch.save({"losses": losses.tolist(), "model": full, "eval": evaluated}, out_dir / "pipeline.pt")
        end_rank()
    finally:  # only reached on an error: end_rank leaves the process
        dist.destroy_process_group()


def _check(tmp_path, world_size, depth=4, **config_kwargs):
    # fork: the ranks inherit the imported modules (a spawned rank spends seconds importing)
    mp.start_processes(_pipeline_rank, args=(world_size, free_port(), config_kwargs, depth, tmp_path),
                       nprocs=world_size, start_method="fork")
    single_losses, single, single_eval = _single(depth, config_kwargs.get("max_grad_norm"))
    result = torch.load(tmp_path / "pipeline.pt")
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(single_losses), rtol=0, atol=1e-5)
    torch.testing.assert_close(result["eval"], single_eval, rtol=0, atol=1e-4)  # [loss sum, correct]
    assert result["model"].keys() == single.keys()
    for name in single:
        torch.testing.assert_close(result["model"][name], single[name], rtol=0, atol=1e-5)
    assert any((single[name] != _model(depth).state_dict()[name]).any() for name in single)  # it did train


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_two_stages_match_one_process(tmp_path, schedule):
    _check(tmp_path, 2, num_stages=2, num_microbatches=4, schedule=schedule)


def test_clipping_over_the_stages_matches_one_process(tmp_path):
    """The global norm adds every stage's squares (a pipeline of 2 x data parallel 2): the
    clipped steps equal one process's with the same max_grad_norm."""
    _check(tmp_path, 4, num_stages=2, num_microbatches=2, schedule="1f1b", max_grad_norm=0.05)


def test_four_stages_match_one_process(tmp_path):
    _check(tmp_path, 4, depth=4, num_stages=4, num_microbatches=4, schedule="1f1b")


def test_data_parallel_times_pipeline_matches_one_process(tmp_path):
    _check(tmp_path, 4, num_stages=2, num_microbatches=2, schedule="1f1b")


@pytest.mark.parametrize("model", ["cnn", "transformer"])
def test_cnn_and_transformer_match_one_process(tmp_path, model):
    _check(tmp_path, 2, depth=model, num_stages=2, num_microbatches=2, schedule="1f1b")


def test_split_balanced_by_measured_time_matches_one_process(tmp_path):
    _check(tmp_path, 2, num_stages=2, num_microbatches=2, schedule="gpipe", balance="time")
