"""Intra-layer split layers on 4 gloo processes == the unsplit layers in one process.

Pure torch.multiprocessing, no Ray. Each spawned rank checks forward outputs, input
gradients and (gathered) parameter gradients of every split mode against the unsplit
layer on the same random inputs, for several shapes, and writes the largest
differences; the test process asserts them. A second test trains the built-in CNN
split spatially (2x2 tiles, and 1x2 tiles x 2 data-parallel replicas) through the
strategy and ``train_step`` and compares the weights with single-process training.
"""

from __future__ import annotations

import copy
import io
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from rayeffi.models import ConvNet
from rayeffi.parallel.base import Strategy
from rayeffi.parallel.halo import SpatialGrid
from rayeffi.parallel.intra_layer import IntraLayer
from rayeffi.parallel.mesh import RankGroup
from rayeffi.parallel.split_model import check_spatial, split_chain, split_spatial
from rayeffi.recipe.intra_layer import IntraLayerConfig
from rayeffi.precision import Precision
from rayeffi.worker.build import assemble
from rayeffi.worker.step import train_step
from helpers.gloo import end_rank, free_port

WORLD = 4
TOLERANCE = 1e-5


def _init(rank, world_size, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)


def _full_grads(module: nn.Module, group: RankGroup) -> dict[str, torch.Tensor]:
    """Every parameter's gradient, shards all-gathered to the unsplit shape."""
    grads = {}
    for prefix, sub in module.named_modules():
        for name, parameter in sub.named_parameters(recurse=False):
            dim = getattr(sub, "shard_dims", {}).get(name)
            grad = parameter.grad
            if dim is not None and group.size > 1:
                pieces = [torch.empty_like(grad) for _ in range(group.size)]
                dist.all_gather(pieces, grad.contiguous())
                grad = torch.cat(pieces, dim)
            grads[f"{prefix}.{name}" if prefix else name] = grad
    return grads


def _compare(reference: nn.Module, split: nn.Module, input_shape, group: RankGroup, seed: int) -> float:
    """Largest |difference| of output, input gradient and parameter gradients."""
    generator = torch.Generator().manual_seed(seed)  # the same inputs on every rank
    x = torch.randn(*input_shape, generator=generator)
    x_ref, x_split = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_split = reference(x_ref), split(x_split)
    upstream = torch.randn(y_ref.shape, generator=generator)
    y_ref.backward(upstream)
    y_split.backward(upstream)
    errors = [(y_ref - y_split).abs().max(), (x_ref.grad - x_split.grad).abs().max()]
    ref_grads, split_grads = dict(reference.named_parameters()), _full_grads(split, group)
    assert ref_grads.keys() == split_grads.keys()
    errors += [(ref_grads[name].grad - split_grads[name]).abs().max() for name in ref_grads]
    return max(float(e) for e in errors)


def _layer_cases():
    """(name, unsplit Sequential builder, input shape, how to split)."""
    cases = []
    for n, width_in, hidden, width_out in [(3, 12, 8, 5), (7, 5, 16, 4), (1, 9, 4, 12)]:
        mlp = lambda i=width_in, h=hidden, o=width_out: nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))
        cases.append((f"fc pair {width_in}-{hidden}-{width_out}", mlp, (n, width_in), ("chain", nn.Linear)))
        cases.append((f"fc column {width_in}-{hidden}", lambda i=width_in, h=hidden: nn.Sequential(nn.Linear(i, h)),
                      (n, width_in), ("chain", nn.Linear)))
    for n, c_in, c_mid, c_out, k, hw in [(2, 3, 8, 6, 3, (6, 6)), (1, 2, 4, 3, 5, (7, 5)), (3, 1, 12, 8, 1, (4, 4))]:
        pair = lambda a=c_in, b=c_mid, c=c_out, k=k: nn.Sequential(
            nn.Conv2d(a, b, k, padding=k // 2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(b, c, k, padding=k // 2))
        cases.append((f"conv channels pair {c_in}-{c_mid}-{c_out} k{k} {hw}", pair, (n, c_in, *hw), ("chain", nn.Conv2d)))
        single = lambda a=c_in, b=c_mid, k=k: nn.Sequential(nn.Conv2d(a, b, k, padding=k // 2, bias=False))
        cases.append((f"conv out-channels {c_in}-{c_mid} k{k} {hw}", single, (n, c_in, *hw), ("chain", nn.Conv2d)))
    spatial = [
        ((2, 2), (8, 8), lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1),
                                               nn.ReLU(), nn.MaxPool2d(2))),
        ((2, 2), (12, 8), lambda: nn.Sequential(nn.Conv2d(2, 3, 5, padding=2), nn.AvgPool2d(2), nn.Conv2d(3, 2, 3, padding=1))),
        ((1, 4), (4, 12), lambda: nn.Sequential(nn.Conv2d(3, 4, (3, 5), padding=(1, 2)), nn.Tanh(), nn.Conv2d(4, 2, 1))),
        ((4, 1), (8, 6), lambda: nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 3, 3, padding=1))),
    ]
    for grid, hw, build in spatial:
        cases.append((f"spatial {grid[0]}x{grid[1]} {hw}", build, (3, build()[0].in_channels, *hw), ("spatial", grid)))
    return cases


def _layer_parity(rank, out_dir):
    group = RankGroup(tuple(range(WORLD)), rank)  # group=None: the default (world) process group
    errors = {}
    for seed, (name, build, shape, (how, arg)) in enumerate(_layer_cases()):
        torch.manual_seed(seed)
        reference = build()
        split = copy.deepcopy(reference)
        if how == "chain":
            split_chain(split, arg, group)
        else:
            check_spatial(split, shape[2:], arg, "case")
            split = split_spatial(split, SpatialGrid(*arg, group))
        errors[name] = _compare(reference, split, shape, group, seed)
    torch.save(errors, out_dir / f"layers{rank}.pt")


def _rank(rank, port, out_dir):
    _init(rank, WORLD, port)
    _layer_parity(rank, out_dir)
    _training(rank, out_dir)
    end_rank()


@pytest.fixture(scope="module")
def gloo_run(tmp_path_factory):
    """One spawn of 4 gloo ranks for both tests (starting the processes costs most of the time)."""
    out_dir = tmp_path_factory.mktemp("intra_layer")
    _train(0, 1, None, out_dir / "single.pt")  # the plain model in one process
    mp.spawn(_rank, args=(free_port(), out_dir), nprocs=WORLD)
    return out_dir


def test_every_split_mode_matches_the_unsplit_layer(gloo_run):
    tmp_path = gloo_run
    for rank in range(WORLD):
        errors = torch.load(tmp_path / f"layers{rank}.pt")
        assert len(errors) == len(_layer_cases())
        for name, error in errors.items():
            assert error < TOLERANCE, f"rank {rank}, {name}: max difference {error:.2e}"


STEPS, GLOBAL_BATCH = 4, 16


def _cnn():
    torch.manual_seed(0)
    return ConvNet((1, 8, 8), 10, channels=(4, 8), hidden=16)


def _parts(rank, world_size, config, seed=0):
    strategy = IntraLayer(rank, world_size, config=config) if config else Strategy()
    torch.manual_seed(seed)
    return assemble(ConvNet((1, 8, 8), 10, channels=(4, 8), hidden=16), strategy, Precision(),
                    lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))


def _steps(parts, rank, world_size, steps):
    generator = torch.Generator().manual_seed(1)
    inputs = torch.rand(STEPS, GLOBAL_BATCH, 64, generator=generator)
    targets = torch.randint(0, 10, (STEPS, GLOBAL_BATCH), generator=generator)
    share = GLOBAL_BATCH // world_size
    losses = []
    for step in steps:
        rows = slice(rank * share, (rank + 1) * share)  # each worker its own shard, as Ray Train deals them
        x, y, _ = parts.strategy.local_batch(inputs[step, rows], targets[step, rows], {})
        losses.append(float(train_step(parts, x, y)))
    return losses


def _train(rank, world_size, config, out):
    parts = _parts(rank, world_size, config)
    losses = _steps(parts, rank, world_size, range(STEPS - 1))
    strategy = parts.strategy
    # a checkpoint round trip mid-run: whole model + per-rank optimizer state into a fresh split model
    buffer = io.BytesIO()  # through bytes, as a checkpoint file: no tensor shared with the live run
    torch.save(strategy.training_state(parts), buffer)
    buffer.seek(0)
    training_state = torch.load(buffer, weights_only=True)
    restored = _parts(rank, world_size, config, seed=1)
    restored.strategy.load_training_state(restored, training_state)
    losses += _steps(parts, rank, world_size, [STEPS - 1])
    _steps(restored, rank, world_size, [STEPS - 1])
    same = torch.tensor(float(all(torch.equal(a, b) for a, b in zip(parts.model.parameters(), restored.model.parameters()))))
    if world_size > 1:
        dist.all_reduce(same, op=dist.ReduceOp.MIN)  # every rank's shards, not only rank 0's
    resumed_exactly = bool(same)
    state = strategy.training_state(parts)["model"]  # a collective: every rank
    if rank == 0:
        torch.save({"state": state, "losses": losses, "resumed_exactly": resumed_exactly}, out)


def _training(rank, out_dir):
    layouts = {
        "2x2 tiles, fc split": IntraLayerConfig(conv="spatial", fc="split"),
        "1x2 tiles x 2 replicas": IntraLayerConfig(conv="spatial", fc="none", model_parallel_size=2),
        "channels, fc split": IntraLayerConfig(conv="channels", fc="split"),
    }
    for index, (name, config) in enumerate(layouts.items()):
        _train(rank, WORLD, config, out_dir / f"train{index}.pt")


def test_spatially_split_cnn_trains_like_one_process(gloo_run):
    tmp_path = gloo_run
    single = torch.load(tmp_path / "single.pt")
    initial = _cnn().state_dict()
    for index in range(3):
        split = torch.load(tmp_path / f"train{index}.pt")
        assert split["state"].keys() == single["state"].keys()
        for name, value in single["state"].items():
            assert split["state"][name].shape == initial[name].shape
            torch.testing.assert_close(split["state"][name], value, rtol=0, atol=TOLERANCE)
        assert split["resumed_exactly"], f"layout {index}: a resumed copy diverged"
        if index != 1:  # with 2 replicas each reports the loss of its own half of the batch
            assert split["losses"] == pytest.approx(single["losses"], abs=TOLERANCE)
    assert single["resumed_exactly"]
    assert any((single["state"][name] != initial[name]).any() for name in initial)  # it did train
