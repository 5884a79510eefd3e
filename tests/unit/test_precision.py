"""Mixed precision (Micikevicius et al. 2018) without Ray: loss scaling, master weights, telemetry.

FP16 has no fast path on CPUs: every FP16 problem here is tiny (the 64-128-64-10
digits MLP at most).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rayeffi.data import builtin_digits_paths
from rayeffi.models.mlp import MLP
from rayeffi.parallel import DataParallel
from rayeffi.recipe.sections import PrecisionConfig
from rayeffi.report.plots import loss_scale_points, write_report
from rayeffi.techniques import Technique
from rayeffi.precision.loss_scaling import has_non_finite, underflow_fraction
from rayeffi.precision import BF16, FP16, PRECISIONS, FP16Master, build_precision
from rayeffi.worker.build import assemble
from rayeffi.worker.step import eval_step, train_step


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These problems are tiny: one thread is faster, and steady on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class GradRecordingSGD(torch.optim.SGD):
    """Plain SGD that keeps a copy of the gradients it was asked to apply."""

    def step(self, closure=None):
        self.applied = [p.grad.detach().clone() for group in self.param_groups for p in group["params"]]
        return super().step(closure)


class ScaleLoss(Technique):
    """Multiplies the task loss by a constant: makes every gradient tiny (or huge)."""

    def __init__(self, factor):
        self.factor = factor

    def loss(self, loss, outputs, inputs, targets, extras):
        return loss * self.factor


def _parts(precision, model, lr=0.1, momentum=0.0, techniques=(), optimizer_class=torch.optim.SGD):
    return assemble(model, DataParallel(), precision, lambda m: optimizer_class(m.parameters(), lr=lr, momentum=momentum),
                    list(techniques))


def _small_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    inputs = torch.randn(32, 8)
    return model, inputs, inputs[:, :4].argmax(dim=1)


# -- the pure functions -------------------------------------------------------------------


def test_underflow_fraction_counts_nonzero_values_fp16_rounds_to_zero():
    grads = [
        torch.tensor([1e-3, 2.0**-24, 2.0**-25, 2.0**-26]),  # 2^-25 is a tie: rounds to even, 0
        torch.tensor([[0.0, 1e-9], [3.0, 0.0]]),  # exact zeros are not counted
    ]
    assert underflow_fraction(grads) == pytest.approx(3 / 6)
    assert underflow_fraction([torch.zeros(3)]) == 0.0


def test_has_non_finite():
    assert not has_non_finite([torch.ones(3), torch.zeros(2, 2)])
    assert has_non_finite([torch.ones(3), torch.tensor([1.0, float("nan")])])
    assert has_non_finite([torch.tensor([float("-inf")])])


# -- loss scaling ---------------------------------------------------------------------------


def test_fp16_without_scaling_loses_tiny_gradients_and_scaling_keeps_them():
    """Loss x 2^-24: FP16 backward flushes the gradients to zero unless the loss is scaled."""
    model, inputs, targets = _small_problem()
    reference = _parts(PRECISIONS["fp32"](), _small_problem()[0], techniques=[ScaleLoss(2.0**-24)],
                       optimizer_class=GradRecordingSGD)
    train_step(reference, inputs, targets)
    exact = reference.optimizer.applied
    assert underflow_fraction(exact) > 0.9  # most of these gradients are below FP16's range

    def fp16_gradients(loss_scale):
        parts = _parts(FP16(loss_scale=loss_scale), _small_problem()[0], techniques=[ScaleLoss(2.0**-24)],
                       optimizer_class=GradRecordingSGD)
        train_step(parts, inputs, targets)
        return parts.optimizer.applied

    def lost(grads):  # fraction of the true nonzero gradient elements that came back zero
        nonzero = torch.cat([e.flatten() for e in exact]) != 0
        return ((torch.cat([g.flatten() for g in grads]) == 0) & nonzero).sum().item() / nonzero.sum().item()

    unscaled, scaled = fp16_gradients(1.0), fp16_gradients("dynamic")  # dynamic starts at 2^16
    assert lost(unscaled) > 0.9
    assert lost(scaled) < 0.01
    for got, want in zip(scaled, exact):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=want.abs().max().item() * 2e-2)


@pytest.mark.parametrize(("policy", "loss_scale", "scale_after"), [
    ("fp16", "dynamic", 2.0**15), ("fp16-master", "dynamic", 2.0**15), ("fp16", 1024.0, 1024.0),
])
def test_overflow_skips_the_step_updates_the_scale_and_never_leaves_nan(policy, loss_scale, scale_after):
    model, inputs, targets = _small_problem()
    precision = PRECISIONS[policy](loss_scale=loss_scale)
    parts = _parts(precision, model, momentum=0.9)
    before = [p.detach().clone() for p in parts.optimizer.param_groups[0]["params"]]
    poisoned = inputs.clone()
    poisoned[0, 0] = float("inf")

    train_step(parts, poisoned, targets)

    for weight, old in zip(parts.optimizer.param_groups[0]["params"], before):
        assert torch.equal(weight, old)  # the step was skipped: masters (or weights) untouched
    assert not parts.optimizer.state  # no momentum buffer was built from NaN gradients
    assert precision.scaler.get_scale() == scale_after
    assert all(p.grad is None for p in parts.model.parameters())

    train_step(parts, inputs, targets)  # the next clean step trains
    assert all(torch.isfinite(p).all() for p in parts.model.parameters())
    assert any(not torch.equal(w, old) for w, old in zip(parts.optimizer.param_groups[0]["params"], before))
    metrics = precision.metrics()
    assert metrics["skipped_steps"] == 1 and metrics["loss_scale"] == scale_after
    assert metrics["loss_scale_history"] == ([[1, 2.0**16], [2, 2.0**15]] if loss_scale == "dynamic"
                                             else [[1, 1024.0], [2, 1024.0]])


def test_dynamic_scale_halves_on_each_overflow_and_doubles_after_growth_interval_clean_steps():
    model, inputs, targets = _small_problem()
    precision = FP16(init_scale=2.0**40, growth_interval=3)  # S * loss overflows FP16 at first
    parts = _parts(precision, model)
    for _ in range(20):
        train_step(parts, inputs, targets)
    history = precision.metrics()["loss_scale_history"]
    skipped = precision.telemetry.num_skipped
    assert skipped >= 10  # 2^40 down to a scale whose gradients fit in FP16
    # one halving per overflowing step, then x2 after every 3 clean steps (or back down on overflow)
    assert history[:skipped] == [[step, 2.0**(41 - step)] for step in range(1, skipped + 1)]
    for (step, scale), (next_step, next_scale) in zip(history[skipped:-1], history[skipped + 1:]):
        assert next_scale in (scale * 2, scale / 2)
        assert next_step - step == 3 or next_scale == scale / 2
    assert all(torch.isfinite(p).all() for p in parts.model.parameters())


def test_scaler_state_round_trips_through_a_checkpoint():
    model, inputs, targets = _small_problem()
    precision = FP16(init_scale=2.0**30, growth_interval=5)
    parts = _parts(precision, model)
    for _ in range(8):
        train_step(parts, inputs, targets)
    buffer = io.BytesIO()
    torch.save(precision.state_dict(), buffer)
    buffer.seek(0)
    restored = FP16(init_scale=2.0**30, growth_interval=5)
    _parts(restored, _small_problem()[0])
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.scaler.get_scale() == precision.scaler.get_scale() < 2.0**30
    assert restored.scaler.state_dict() == precision.scaler.state_dict()  # growth tracker included
    assert restored.telemetry.num_skipped == precision.telemetry.num_skipped > 0


# -- master weights -------------------------------------------------------------------------


def test_fp16_master_keeps_fp32_masters_while_the_model_computes_in_fp16():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 4))
    initial = [p.detach().clone() for p in model.parameters()]
    _, inputs, targets = _small_problem()
    precision = FP16Master()
    parts = _parts(precision, model, lr=0.05, momentum=0.9)

    linear_weights = [model[0].weight, model[0].bias, model[3].weight, model[3].bias]
    assert all(p.dtype == torch.float16 for p in linear_weights)
    assert all(p.dtype == torch.float32 for p in model[1].parameters())  # norms stay FP32
    optimized = parts.optimizer.param_groups[0]["params"]
    assert all(p.dtype == torch.float32 for p in optimized)
    assert not any(p is q for p in optimized for q in linear_weights)
    masters = [master for _, master in precision.pairs]
    assert torch.equal(masters[0], initial[0])  # exact FP32 copies, taken before the cast

    with precision.autocast():
        assert model(inputs).dtype == torch.float16
    for _ in range(3):
        train_step(parts, inputs, targets)
    for param, master in precision.pairs:
        assert param.dtype == torch.float16 and master.dtype == torch.float32
        assert torch.equal(param, master.half())  # the FP16 weights are the rounded masters
    assert not torch.equal(masters[0], initial[0])
    assert {"masters", "scaler"} <= set(precision.state_dict())


def test_without_master_weights_small_updates_round_away():
    """Negative control: FP16 weights updated in place at a small learning rate drift from FP32.

    Near a weight w, FP16 numbers are ~w * 2^-10 apart; an update ``lr * g`` below half
    of that is lost. With FP32 masters the same FP16 model follows the FP32 run.
    """
    inputs, targets = _digits("train")
    batches = [(inputs[i:i + 64], targets[i:i + 64]) for i in range(0, 64 * 20, 64)]
    lr, scale = 1e-3, 1024.0

    def trained(policy):
        torch.manual_seed(0)
        options = {"loss_scale": scale} if policy != "fp32" else {}
        parts = _parts(PRECISIONS[policy](**options), MLP(64, 10, (128, 64)), lr=lr)
        for x, y in batches:
            train_step(parts, x, y)
        return [p.detach().float() for p in parts.optimizer.param_groups[0]["params"]]  # the masters

    torch.manual_seed(0)
    pure = MLP(64, 10, (128, 64)).half()  # FP16 weights, no master copy
    initial = [p.detach().clone() for p in pure.parameters()]
    optimizer = torch.optim.SGD(pure.parameters(), lr=lr)
    for x, y in batches:
        with torch.autocast("cpu", dtype=torch.float16):
            outputs = pure(x)
        (F.cross_entropy(outputs.float(), y) * scale).backward()
        for p in pure.parameters():
            p.grad /= scale
        optimizer.step()  # w16 -= lr * g16: rounds to FP16 in place
        optimizer.zero_grad()

    fp32, master = trained("fp32"), trained("fp16-master")

    def distance_moved(weights):  # how far training moved the weights, vs how far FP32 moved them
        moved = torch.cat([(w - i.float()).flatten() for w, i in zip(weights, initial)])
        reference = torch.cat([(w - i.float()).flatten() for w, i in zip(fp32, initial)])
        return (moved - reference).norm().item() / reference.norm().item()

    def fraction_changed(weights):
        return sum((w != i.float()).sum().item() for w, i in zip(weights, initial)) / sum(i.numel() for i in initial)

    pure_weights = [p.detach().float() for p in pure.parameters()]
    assert fraction_changed(pure_weights) < 0.2  # most updates rounded away
    assert fraction_changed(master) > 0.99  # every master moved
    assert distance_moved(master) < 0.02  # the masters follow the FP32 run
    assert distance_moved(pure_weights) > 0.8


# -- telemetry ------------------------------------------------------------------------------


def test_bf16_reports_what_fp16_would_lose_and_samples_once_per_epoch():
    model, inputs, targets = _small_problem()
    precision = BF16()
    parts = _parts(precision, model, techniques=[ScaleLoss(2.0**-24)])
    train_step(parts, inputs, targets)
    first = precision.telemetry.underflow
    assert first > 0.9  # these gradients are fine in BF16 and would vanish in FP16
    train_step(parts, inputs * 0, targets)  # not sampled: only the epoch's first step is
    assert precision.telemetry.underflow == first
    metrics = precision.metrics()
    assert metrics == {"loss_scale": 1.0, "skipped_steps": 0, "grad_underflow_fp16": first}
    assert precision.telemetry.wants_sample  # the next epoch samples again
    with precision.autocast():
        assert parts.model(inputs).dtype == torch.bfloat16


def test_build_precision_from_the_recipe_config():
    precision = build_precision(PrecisionConfig(policy="fp16", loss_scale=512, growth_interval=None))
    assert isinstance(precision, FP16) and precision.static_scale == 512.0
    dynamic = build_precision(PrecisionConfig(policy="fp16-master", init_scale=1024, growth_interval=7))
    assert isinstance(dynamic, FP16Master) and dynamic.scaler_options["growth_interval"] == 7
    assert type(build_precision("bf16")) is BF16 and type(build_precision(PrecisionConfig())) is PRECISIONS["fp32"]


def test_report_plots_the_loss_scale_over_steps(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": 0.9, "val_accuracy": 0.5, "loss_scale": 2.0**15,
         "skipped_steps": 1, "loss_scale_history": [[1, 2.0**16], [2, 2.0**15], [4, 2.0**15]]},
        {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.8, "loss_scale": 2.0**16,
         "skipped_steps": 1, "loss_scale_history": [[5, 2.0**15], [6, 2.0**16], [8, 2.0**16]]},
    ]
    (tmp_path / "summary.json").write_text(json.dumps({"stages": [{"name": "train", "kind": "train", "history": history}]}))
    assert loss_scale_points(history) == [(1, 2.0**16), (2, 2.0**15), (4, 2.0**15), (5, 2.0**15), (6, 2.0**16),
                                          (8, 2.0**16)]
    assert loss_scale_points([{"epoch": 1}]) == []  # FP32 runs: no loss-scale panel
    png, page = write_report(tmp_path)  # the stage's curves, then the HTML page
    assert png.stat().st_size > 0 and page.name == "index.html"


# -- accuracy on the built-in digits ----------------------------------------------------------


def _digits(split):
    table = pq.read_table(builtin_digits_paths()[0 if split == "train" else 1])
    features = np.stack(table["features"].to_numpy(zero_copy_only=False)).astype(np.float32)
    return torch.from_numpy(features), torch.tensor(table["label"].to_numpy())


def _digits_accuracy(policy, epochs=10):
    (train_x, train_y), (val_x, val_y) = _digits("train"), _digits("val")
    torch.manual_seed(0)
    parts = _parts(PRECISIONS[policy](), MLP(64, 10, (128, 64)), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(train_y), generator=generator)
        for start in range(0, len(order), 64):
            rows = order[start:start + 64]
            train_step(parts, train_x[rows], train_y[rows])
    _, correct, _ = eval_step(parts, val_x, val_y)
    return correct.item() / len(val_y)


@pytest.fixture(scope="module")
def fp32_digits_accuracy():
    return _digits_accuracy("fp32")


@pytest.mark.parametrize("policy", ["bf16", "fp16", "fp16-master"])
def test_mixed_precision_reaches_fp32_accuracy_on_digits(policy, fp32_digits_accuracy):
    """Same seed, data order and optimizer: no more than 1.25 points below FP32 (360 digits: 4 digits).

    Rounding moves a few borderline digits: bf16 was seen 0 and 2 digits below FP32 on two
    machines of the same kind (oneDNN picks kernels by CPU), so one digit was too tight.
    """
    assert fp32_digits_accuracy > 0.95
    assert _digits_accuracy(policy) >= fp32_digits_accuracy - 0.0125
