"""Magnitude masks (golden values), the DSD technique through the real step, and DSD configs (no Ray)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rayeffi.errors import UserError
from rayeffi.models import ConvNet
from rayeffi.parallel import DataParallel
from rayeffi.recipe import load_recipe
from rayeffi.techniques.dsd.config import DsdConfig, dsd_phases
from rayeffi.techniques import DenseSparseDense
from rayeffi.precision import Precision
from rayeffi.techniques.dsd.sparsity import layer_targets, magnitude_masks, measured_sparsity, prunable_weights
from rayeffi.worker.optim import build_scheduler
from rayeffi.recipe import OptimizerConfig
from rayeffi.worker.build import assemble
from rayeffi.worker.step import train_step


def test_magnitude_masks_golden():
    weight = torch.tensor([[0.5, -0.1, 0.3], [-0.05, 0.2, -0.4]])
    masks = magnitude_masks({"w": weight}, {"w": 0.5})
    assert masks["w"].tolist() == [[True, False, True], [False, False, True]]
    # ties broken by position: the earlier of two equal magnitudes is pruned first
    tied = magnitude_masks({"w": torch.tensor([0.1, -0.1, 0.1, 0.3])}, {"w": 0.5})
    assert tied["w"].tolist() == [False, False, True, True]


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9, 0.999])
def test_measured_sparsity_within_one_weight(sparsity):
    torch.manual_seed(0)
    weights = {"a": torch.randn(37, 23), "b": torch.randn(8, 3, 3, 3)}
    masks = magnitude_masks(weights, {"a": sparsity, "b": sparsity})
    for name, mask in masks.items():
        pruned = (~mask).sum().item()
        assert abs(pruned - sparsity * mask.numel()) <= 1


def test_prunable_weights_skip_biases_norms_first_conv_and_patterns():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    assert list(prunable_weights(model)) == ["2.weight", "4.weight"]
    assert list(prunable_weights(model, skip_first_conv=False)) == ["0.weight", "2.weight", "4.weight"]
    assert list(prunable_weights(model, skip=("4.*",))) == ["2.weight"]
    assert layer_targets(["2.weight", "4.weight"], 0.5, {"4.*": 0.8}) == {"2.weight": 0.5, "4.weight": 0.8}


def test_one_line_schedule_and_phase_plan():
    config = DsdConfig(rounds=[0.5, 0.25], dense_epochs=2, sparse_epochs=3, redense_epochs=2)
    plan = [(p.kind, p.round, p.first_epoch, p.num_epochs, p.sparsity, p.lr_factor) for p in dsd_phases(config)]
    assert plan == [
        ("dense", 0, 0, 2, 0.0, 1.0),
        ("sparse", 1, 2, 3, 0.5, 1.0), ("redense", 1, 5, 2, 0.0, 0.1),
        ("sparse", 2, 7, 3, 0.25, 1.0), ("redense", 2, 10, 2, 0.0, 0.1),
    ]
    per_round = DsdConfig(rounds=[{"sparsity": 0.7, "sparse_epochs": 1, "redense_epochs": 0}])
    assert [(p.kind, p.num_epochs) for p in dsd_phases(per_round)] == [("sparse", 1)]


def test_dsd_recipe_validation(write_recipe):
    good = "stages: [{name: d, kind: dsd, dsd: {rounds: [0.5, 0.25], dense_epochs: 2}}]\n"
    stage = load_recipe(write_recipe(good)).stages[0]
    assert stage.total_epochs == 2 + 2 * (3 + 3)
    smoke = load_recipe(write_recipe(good), smoke=True).stages[0]
    assert smoke.total_epochs == 1 + 2 * (1 + 1)
    for text, message in [
        ("stages: [{name: d, kind: dsd, dsd: {rounds: [0.5]}}]\n", "needs dense weights"),
        ("stages: [{name: d, kind: dsd, epochs: 3, dsd: {rounds: [0.5], dense_epochs: 1}}]\n", "sum of its phases"),
        ("stages: [{name: d, kind: dsd, dsd: {rounds: [1.5], dense_epochs: 1}}]\n", "stages.d.dsd.rounds.0.sparsity"),
        ("stages: [{name: d, kind: dsd, dsd: {rounds: [], dense_epochs: 1}}]\n", "stages.d.dsd.rounds"),
        ("stages: [{name: d, kind: dsd, dsd: {rounds: [0.5], dense_epochs: 1, prune: x}}]\n",
         "unknown key 'stages.d.dsd.prune'.*allowed here: dense_epochs"),
    ]:
        with pytest.raises(UserError, match=message):
            load_recipe(write_recipe(text))


def _dsd_run(optimizer_name: str, config: DsdConfig, epochs_to_run: int, model=None):
    """Train a small MLP with the DSD technique through the real train_step; record per-epoch facts."""
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    make_optimizer = ((lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)) if optimizer_name == "sgd"
                      else (lambda m: torch.optim.Adam(m.parameters(), lr=0.01)))
    technique = DenseSparseDense(config)
    parts = assemble(model, DataParallel(), Precision(), make_optimizer, [technique])
    optimizer = parts.optimizer
    scheduler = build_scheduler(OptimizerConfig(), optimizer, 100, [technique])
    inputs = torch.randn(64, 8)
    targets = inputs[:, :3].argmax(1)
    record = []
    for epoch in range(epochs_to_run):
        technique.on_epoch_start(epoch, model, optimizer)
        lr = optimizer.param_groups[0]["lr"]
        zero_after_each_step = []
        for _ in range(4):
            train_step(parts, inputs, targets)
            if technique.masks is not None:
                zero_after_each_step.append(
                    all((technique.weights[n][~m] == 0).all().item() for n, m in technique.masks.items())
                )
        scheduler.step()
        record.append({"phase": technique.phases[technique.phase_index].kind, "lr": lr,
                       "zeros_held": all(zero_after_each_step), "metrics": technique.metrics()})
    return model, technique, record


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_pruned_weights_stay_exactly_zero_then_revive(optimizer_name):
    config = DsdConfig(rounds=[0.6], dense_epochs=2, sparse_epochs=2, redense_epochs=2, redense_lr_factor=0.1)
    model, technique, record = _dsd_run(optimizer_name, config, 6)
    assert [r["phase"] for r in record] == ["dense"] * 2 + ["sparse"] * 2 + ["redense"] * 2
    sparse = [r for r in record if r["phase"] == "sparse"]
    assert all(r["zeros_held"] for r in sparse)  # after every optimizer step, momentum/Adam included
    for r in sparse:
        for name, value in r["metrics"]["layer_sparsity"].items():
            numel = technique.weights[name].numel()
            assert abs(value * numel - 0.6 * numel) <= 1
    # re-dense: the pruned weights train again from zero
    pruned = technique.sparse_snapshot["masks"]
    revived = sum((technique.weights[n][~m] != 0).sum().item() for n, m in pruned.items())
    assert revived > 0.5 * sum((~m).sum().item() for m in pruned.values())
    # the learning rate: base in the dense and sparse phases, base x factor when re-dense
    assert [r["lr"] for r in record] == pytest.approx([0.1 if optimizer_name == "sgd" else 0.01] * 4
                                                      + [0.01 if optimizer_name == "sgd" else 0.001] * 2)


def test_skipped_layers_are_untouched():
    model = ConvNet((1, 8, 8), num_classes=3, channels=(4, 4))
    config = DsdConfig(rounds=[0.5], dense_epochs=1, sparse_epochs=1, redense_epochs=0, skip=("classifier.3.*",))
    first_conv = model.features[0].weight.detach().clone()
    technique = DenseSparseDense(config)
    technique.setup(model, torch.optim.SGD(model.parameters(), lr=0.0))
    assert "features.0.weight" not in technique.weights and "classifier.3.weight" not in technique.weights
    technique.on_epoch_start(1, model, torch.optim.SGD(model.parameters(), lr=0.0))
    assert torch.equal(model.features[0].weight, first_conv)
    assert (model.classifier[3].weight != 0).all() and (model.features[2].bias != 0).all()
    assert measured_sparsity({"w": model.features[2].weight})["w"] == 0.5


def test_state_round_trip_keeps_the_masks_mid_phase():
    config = DsdConfig(rounds=[0.5], dense_epochs=1, sparse_epochs=3, redense_epochs=1)
    model, technique, _ = _dsd_run("sgd", config, 2)  # stops inside the sparse phase
    state = technique.state_dict()
    fresh = DenseSparseDense(config)
    fresh.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    fresh.load_state_dict(state)
    fresh.on_epoch_start(2, model, torch.optim.SGD(model.parameters(), lr=0.1))  # same phase: no re-pruning
    for name in technique.masks:
        assert torch.equal(fresh.masks[name], technique.masks[name])
