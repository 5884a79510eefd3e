"""``rayeffi.prepare``: the step's parts in a user's loop (one process; 2 workers: tests/ray/test_own_loop.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rayeffi
from rayeffi.errors import UserError
from rayeffi.worker.build import assemble
from rayeffi.parallel import DataParallel
from rayeffi.precision import build_precision
from rayeffi.techniques.dsd import DenseSparseDense
from rayeffi.worker.step import StepParts, train_step

DSD = {"name": "dsd", "rounds": [0.5], "dense_epochs": 1, "sparse_epochs": 1, "redense_epochs": 1}


def _data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(96, 12, generator=generator)
    labels = (features[:, 0] > 0).long() + (features[:, 1] > 0).long()
    return features, labels


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 3))


def _own_loop(fx, features, labels, epochs):
    for epoch in range(epochs):
        fx.epoch_start(epoch)
        for first in range(0, len(labels), 32):
            x, y = features[first:first + 32], labels[first:first + 32]
            with fx.autocast():
                logits = fx.model(x)
                loss = fx.loss(F.cross_entropy(logits.float(), y), logits, x, y)
            fx.backward(loss)
            fx.step()
        fx.epoch_end(train_loss=loss.item())


@pytest.mark.parametrize("policy", ["fp32", "bf16", "fp16"])
def test_prepare_steps_as_train_step_does(policy):
    """The facade and the recipe's ``train_step`` take the same steps (same parts, same order)."""
    features, labels = _data()
    fx = rayeffi.prepare(model := _model(), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                         precision=policy, techniques=[DSD])
    _own_loop(fx, features, labels, 3)

    reference = _model()
    technique = DenseSparseDense(rayeffi.DsdConfig.model_validate(DSD))
    parts = assemble(reference, DataParallel(), build_precision(policy),
                     lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), [technique])
    base_lr = 0.1
    for epoch in range(3):
        technique.on_epoch_start(epoch, reference, parts.optimizer)
        parts.optimizer.param_groups[0]["lr"] = base_lr * technique.lr_factor(epoch)
        for first in range(0, len(labels), 32):
            train_step(parts, features[first:first + 32], labels[first:first + 32])
    for (name, ours), theirs in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6, msg=name)
    assert fx.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # re-dense: LR/10


def test_epoch_metrics_summary_and_sparse_state():
    features, labels = _data()
    fx = rayeffi.prepare(model := _model(), torch.optim.SGD(model.parameters(), lr=0.1), techniques=[DSD])
    assert fx.epochs == 3 and fx.sparse_state() == {}
    _own_loop(fx, features, labels, 3)
    assert [row["dsd_phase"] for row in fx.history] == ["dense", "sparse", "redense"]
    rounds = fx.summary()["rounds"]
    assert rounds[1]["phase"] == "sparse" and rounds[1]["measured_sparsity"] == pytest.approx(0.5, abs=0.01)
    sparse = fx.sparse_state()
    for name, mask in sparse["masks"].items():
        assert (sparse["model"][name][~mask] == 0).all()
        assert (~mask).float().mean().item() == pytest.approx(0.5, abs=0.02)


def test_state_dict_round_trip_continues_identically():
    features, labels = _data()

    def prepared():
        model = _model()
        return rayeffi.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), precision="fp16",
                               techniques=[DSD])

    straight, resumed = prepared(), prepared()
    _own_loop(straight, features, labels, 2)
    state = copy.deepcopy(straight.state_dict())  # as a checkpoint file holds it: no shared tensors
    resumed.load_state_dict(state)
    for fx in (straight, resumed):
        fx.epoch_start(2)
        for first in range(0, len(labels), 32):
            x, y = features[first:first + 32], labels[first:first + 32]
            with fx.autocast():
                loss = F.cross_entropy(fx.model(x).float(), y)
            fx.backward(loss)
            fx.step()
    for ours, theirs in zip(straight.module.state_dict().values(), resumed.module.state_dict().values()):
        assert torch.equal(ours, theirs)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_distillation_from_a_teacher_module_and_a_factory_optimizer():
    features, labels = _data()
    teacher = _model(seed=1)
    fx = rayeffi.prepare(_model(), lambda params: torch.optim.Adam(params, lr=1e-3), precision="bf16",
                         techniques=[rayeffi.DistillConfig(teachers=[teacher], temperature=2.0, alpha=0.5)])
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training  # frozen
    _own_loop(fx, features, labels, 1)
    assert fx.history[0]["kd_soft_loss"] > 0 and fx.history[0]["kd_ce_loss"] > 0
    assert "teachers" not in rayeffi.DistillConfig(teachers=[teacher]).model_dump()["teachers"][0]


@pytest.mark.parametrize("call, message", [
    (lambda m: rayeffi.prepare("model", torch.optim.SGD(m.parameters(), lr=0.1)), "must be a torch.nn.Module"),
    (lambda m: rayeffi.prepare(m, "sgd"), "optimizer must be a torch.optim.Optimizer or a factory"),
    (lambda m: rayeffi.prepare(m, torch.optim.SGD(m.parameters(), lr=0.1), precision="fp8"), "precision 'fp8'"),
    (lambda m: rayeffi.prepare(m, torch.optim.SGD(m.parameters(), lr=0.1), task="ranking"), "task 'ranking'"),
    (lambda m: rayeffi.prepare(m, torch.optim.SGD(m.parameters(), lr=0.1), techniques=[{"name": "prune"}]),
     "techniques[0].name 'prune'"),
    (lambda m: rayeffi.prepare(m, torch.optim.SGD(m.parameters(), lr=0.1), techniques=[{"name": "dsd"}]),
     "techniques[0] (dsd).rounds"),
    (lambda m: rayeffi.prepare(m, torch.optim.SGD(m.parameters(), lr=0.1), max_grad_norm=0), "max_grad_norm"),
    (lambda m: rayeffi.prepare(m, torch.optim.SGD(m.parameters(), lr=0.1), accumulate_steps=0), "accumulate_steps"),
    (lambda m: rayeffi.prepare(m, torch.optim.SGD(m.parameters(), lr=0.1), techniques=[42]),
     "not a technique config"),
    (lambda m: rayeffi.prepare(m, torch.optim.SGD(m.parameters(), lr=0.1), techniques=[DSD, DSD]),
     "name one twice"),
    (lambda m: rayeffi.prepare(m, torch.optim.SGD(m.parameters(), lr=0.1),
                               techniques=[{"name": "distill", "teachers": ["teacher"]}]),
     "pass the trained teacher modules"),
])
def test_wrong_arguments_are_one_line_user_errors(call, message):
    with pytest.raises(UserError) as error:
        call(_model())
    assert message in str(error.value) and "\n" not in str(error.value)


def test_step_parts_are_public():
    fx = rayeffi.prepare(model := _model(), torch.optim.SGD(model.parameters(), lr=0.1))
    assert isinstance(fx.parts, StepParts) and fx.module is model


@pytest.mark.parametrize("policy, tolerance", [("fp32", 1e-5), ("bf16", 1e-3)])
def test_accumulated_micro_batches_equal_one_step_of_the_whole_batch(policy, tolerance):
    """k=2 micro-batches of 16 rows with ``accumulate`` == one step of 32 rows, DSD masks included
    (bf16: each micro-batch's matmuls round to bf16 on their own, 8 bits of mantissa: a looser bound)."""
    features, labels = _data()
    whole = rayeffi.prepare(model := _model(), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                            precision=policy, techniques=[DSD])
    _own_loop(whole, features, labels, 3)
    accumulated = rayeffi.prepare(other := _model(), torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9),
                                  precision=policy, techniques=[DSD], accumulate_steps=2)
    stepped = []
    for epoch in range(3):
        accumulated.epoch_start(epoch)
        for first in range(0, len(labels), 16):
            x, y = features[first:first + 16], labels[first:first + 16]
            with accumulated.accumulate(), accumulated.autocast():
                loss = F.cross_entropy(accumulated.model(x).float(), y)
            accumulated.backward(loss)
            stepped.append(accumulated.step())
    assert stepped[:4] == [False, True, False, True]
    for (name, ours), theirs in zip(other.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=tolerance, msg=name)


def test_clipping_reports_the_pre_clip_norm_and_clips_as_torch_does():
    features, labels = _data()
    fx = rayeffi.prepare(model := _model(), torch.optim.SGD(model.parameters(), lr=0.0), max_grad_norm=0.01)
    reference = _model()
    x, y = features[:32], labels[:32]
    F.cross_entropy(reference(x), y).backward()
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.01)
    clipped = [p.grad.clone() for p in reference.parameters()]
    fx.epoch_start(0)
    loss = F.cross_entropy(fx.model(x), y)
    fx.backward(loss)
    fx.parts.precision.step = lambda optimizer: None  # keep the clipped gradients to compare
    fx.parts.optimizer.zero_grad = lambda set_to_none=True: None
    fx.step()
    for ours, theirs in zip(model.parameters(), clipped):
        torch.testing.assert_close(ours.grad, theirs, rtol=1e-5, atol=1e-7)
    assert fx.epoch_end()["grad_norm"] == pytest.approx(norm.item(), rel=1e-5)
