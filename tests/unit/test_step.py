"""The step's slot order and the shared contract every strategy/precision/technique meets.

The contract test iterates the package's own registries, so a new strategy or precision
policy is checked here the moment it is registered; a new technique adds a factory to
``CONTRACT_TECHNIQUES``.
"""

from __future__ import annotations

import contextlib
import io
import itertools

import pytest
import torch
from torch import nn

from rayeffi.parallel import STRATEGIES
from rayeffi.recipe.compat import forbidden_slots
from rayeffi.techniques.distill.config import DistillConfig
from rayeffi.techniques.dsd.config import DsdConfig
from rayeffi.techniques import TECHNIQUES, DenseSparseDense, Technique
from rayeffi.precision import PRECISIONS, Precision
from rayeffi.techniques.distill import Distillation, freeze
from rayeffi.worker.build import assemble
from rayeffi.worker.step import eval_step, train_step


def _distillation(hints=True, alpha=0.5):
    torch.manual_seed(7)
    teacher = freeze(nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 3)))
    config = DistillConfig.model_validate({
        "teachers": [{"stage": "teacher", "model": {}}], "alpha": alpha, "temperature": 2.0,
        "hints": [{"student": "1", "teacher": "1", "weight": 0.1}] if hints else [],
    })
    return [Distillation(config, [teacher], num_features=6)]


def _dsd():
    return [DenseSparseDense(DsdConfig(rounds=[0.5], sparse_epochs=1, redense_epochs=1))]


CONTRACT_TECHNIQUES = {
    "none": lambda: [],
    "no-op": lambda: [Technique()],
    "distill+hints": _distillation,
    "dsd": _dsd,
    # the teacher is untrained: a small alpha keeps "learns" about the labels
    "dsd+distill": lambda: _dsd() + _distillation(hints=False, alpha=0.2),
}
"""Every registered technique alone, and the list that prunes while a teacher distils."""


def test_the_contract_covers_every_registered_technique():
    covered = {technique.name for factory in CONTRACT_TECHNIQUES.values() for technique in factory()}
    assert set(TECHNIQUES) <= covered


class Recorder(Technique):
    def __init__(self, name, log):
        self.name, self.log = name, log

    def loss(self, loss, outputs, inputs, targets, extras):
        self.log.append(f"{self.name}.loss")
        return loss

    def after_backward(self, model):
        grads_exist = all(p.grad is not None for p in model.parameters())
        self.log.append(f"{self.name}.after_backward(grads={grads_exist})")

    def after_step(self, model):
        self.log.append(f"{self.name}.after_step")


class RecordingPrecision(Precision):
    def __init__(self, log):
        self.log = log

    @contextlib.contextmanager
    def autocast(self):
        self.log.append("autocast.enter")
        yield
        self.log.append("autocast.exit")

    def backward(self, loss):
        self.log.append("backward")
        super().backward(loss)

    def step(self, optimizer):
        self.log.append("optimizer.step")
        return super().step(optimizer)


def _problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    inputs = torch.randn(48, 6)
    targets = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0).long()
    return model, inputs, targets


def test_slot_order_is_forward_losses_backward_hooks_step_hooks():
    log: list[str] = []
    model, inputs, targets = _problem()
    parts = assemble(model, STRATEGIES["data_parallel"](), RecordingPrecision(log),
                     lambda m: torch.optim.SGD(m.parameters(), lr=0.1), [Recorder("a", log), Recorder("b", log)])
    train_step(parts, inputs, targets)
    assert log == [
        "autocast.enter", "a.loss", "b.loss", "autocast.exit",
        "backward",
        "a.after_backward(grads=True)", "b.after_backward(grads=True)",
        "optimizer.step",
        "a.after_step", "b.after_step",
    ]
    assert all(p.grad is None for p in model.parameters())  # zeroed for the next step


def test_train_step_equals_a_hand_written_sgd_step():
    model, inputs, targets = _problem()
    reference = _problem()[0]
    parts = assemble(model, STRATEGIES["data_parallel"](), Precision(), lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    loss = train_step(parts, inputs, targets)
    expected = nn.functional.cross_entropy(reference(inputs), targets)
    expected.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    assert loss.item() == pytest.approx(expected.item(), abs=1e-7)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    ("strategy_name", "precision_name", "techniques_name"),
    # strategies that need several processes run this contract in their own gloo tests
    list(itertools.product([n for n, s in STRATEGIES.items() if s.min_world_size == 1], PRECISIONS, CONTRACT_TECHNIQUES)),
)
def test_contract(strategy_name, precision_name, techniques_name):
    """Learns, stays finite, and a checkpoint round trip continues exactly."""
    names = {technique.name for technique in CONTRACT_TECHNIQUES[techniques_name]()}
    rule = forbidden_slots(strategy_name, precision_name, names)
    if rule is not None and rule.technique in names:  # a technique the recipe never lets meet these slots
        pytest.skip(f"rejected at load by recipe/compat.py: {rule.reason}")
    if strategy_name == "intra_layer" and "dsd" in names:  # the default layout shards every Linear
        pytest.skip("rejected at load by recipe/compat.py: dsd with sharded intra_layer layers")

    def build(seed=0):
        model, inputs, targets = _problem(seed)
        parts = assemble(model, STRATEGIES[strategy_name](), PRECISIONS[precision_name](),
                         lambda m: torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9),
                         CONTRACT_TECHNIQUES[techniques_name]())
        for technique in parts.techniques:
            technique.on_epoch_start(0, parts.model, parts.optimizer)  # DSD prunes here
        return parts, inputs, targets

    parts, inputs, targets = build()
    first_loss, _, _ = eval_step(parts, inputs, targets)
    for _ in range(20):
        train_step(parts, inputs, targets)
    last_loss, _, _ = eval_step(parts, inputs, targets)
    assert last_loss < 0.7 * first_loss
    assert all(torch.isfinite(p).all() for p in parts.model.parameters())

    buffer = io.BytesIO()
    torch.save(parts.strategy.training_state(parts), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored, _, _ = build(seed=1)  # different initial weights: the checkpoint must overwrite them
    restored.strategy.load_training_state(restored, state)
    for _ in range(3):
        train_step(parts, inputs, targets)
        train_step(restored, inputs, targets)
    for a, b in zip(parts.model.parameters(), restored.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
