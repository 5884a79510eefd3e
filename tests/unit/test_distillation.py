"""Knowledge distillation: the losses' golden values and maths, hints, the cache, the technique."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rayeffi.data.info import DatasetInfo
from rayeffi.techniques.distill.soft_labels import TEACHER_LOGITS, TeacherLogits
from rayeffi.errors import UserError
from rayeffi.models import build_model
from rayeffi.parallel import DataParallel
from rayeffi.recipe import validate_recipe
from rayeffi.techniques.distill.config import DistillConfig
from rayeffi.recipe.sections import ModelConfig, PrecisionConfig
from rayeffi.techniques.distill.driver import check_distill_stage
from rayeffi.precision import Precision
from rayeffi.techniques.distill import Distillation, freeze
from rayeffi.techniques.distill.losses import (
    FeatureCapture,
    build_adapter,
    kd_loss,
    soft_target_loss,
    teacher_log_probs,
)
from rayeffi.worker.build import assemble
from rayeffi.worker.step import train_step

INFO = DatasetInfo(num_features=64, num_classes=10, image_shape=(1, 8, 8), num_train=64, num_val=16)
STUDENT_LOGITS = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
TEACHER_LOGITS_2 = torch.tensor([[3.0, 2.0, 1.0], [2.0, 0.0, -2.0]])
TARGETS = torch.tensor([2, 0])


def _kl_by_hand(student, teacher, temperature):
    """sum_i p_i (log p_i - log q_i), averaged over rows, in float64 numpy."""
    s, t = np.asarray(student, np.float64) / temperature, np.asarray(teacher, np.float64) / temperature
    q = np.exp(s - s.max(1, keepdims=True)); q /= q.sum(1, keepdims=True)
    p = np.exp(t - t.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    return float((p * (np.log(p) - np.log(q))).sum(1).mean())


def test_kd_loss_golden_values():
    # values computed by hand from the formula (numpy, float64), pinned to 6 digits
    ce = F.cross_entropy(STUDENT_LOGITS, TARGETS).item()
    assert ce == pytest.approx(0.5058683, abs=1e-6)
    assert _kl_by_hand(STUDENT_LOGITS, TEACHER_LOGITS_2, 2.0) == pytest.approx(0.2526320, abs=1e-6)
    loss = kd_loss(STUDENT_LOGITS, TEACHER_LOGITS_2, TARGETS, temperature=2.0, alpha=0.75)
    assert loss.item() == pytest.approx(0.75 * 2.0**2 * 0.2526320 + 0.25 * 0.5058683, abs=1e-6)
    assert loss.item() == pytest.approx(0.8843630, abs=1e-6)


def test_kd_loss_ends():
    ce = F.cross_entropy(STUDENT_LOGITS, TARGETS)
    torch.testing.assert_close(kd_loss(STUDENT_LOGITS, TEACHER_LOGITS_2, TARGETS, 3.0, alpha=0.0), ce)
    soft = kd_loss(STUDENT_LOGITS, TEACHER_LOGITS_2, TARGETS, 3.0, alpha=1.0)
    assert soft.item() == pytest.approx(9 * _kl_by_hand(STUDENT_LOGITS, TEACHER_LOGITS_2, 3.0), abs=1e-5)
    assert kd_loss(TEACHER_LOGITS_2, TEACHER_LOGITS_2, TARGETS, 3.0, alpha=1.0).item() == pytest.approx(0, abs=1e-6)


def test_t_squared_keeps_the_soft_gradient_scale_independent_of_t():
    """Hinton 2015 2.1: d KL / d s ~ (s - t) / (N C T^2) for large T; T^2 restores the scale."""
    torch.manual_seed(0)
    teacher = torch.randn(16, 10)
    student = torch.randn(16, 10)
    student -= student.mean(1, keepdim=True)  # zero-mean logits, as the high-T approximation assumes
    teacher -= teacher.mean(1, keepdim=True)
    norms = {}
    for temperature in (4.0, 8.0, 16.0, 32.0):
        logits = student.clone().requires_grad_(True)
        soft_target_loss(logits, teacher, temperature).backward()
        norms[temperature] = logits.grad.norm().item()
    # softmax(x / T) ~ (1 + x / T) / C, so T^2 * d KL / d s = T^2 * (q - p) / (N T) -> (s - t) / (N C)
    limit = ((student - teacher) / (16 * 10)).norm().item()
    assert norms[32.0] == pytest.approx(limit, rel=0.02)
    assert max(norms.values()) / min(norms.values()) < 1.3
    # without the factor it would fall by 64x from T=4 to T=32
    assert norms[4.0] / 16 / (norms[32.0] / 1024) > 50


def test_ensemble_soft_targets_average_probabilities():
    ensemble = torch.stack([TEACHER_LOGITS_2, -TEACHER_LOGITS_2, torch.zeros(2, 3)])
    expected = torch.stack([F.softmax(t / 2.0, -1) for t in ensemble]).mean(0).log()
    torch.testing.assert_close(teacher_log_probs(ensemble, 2.0), expected)
    torch.testing.assert_close(teacher_log_probs(ensemble[:1], 2.0), F.log_softmax(ensemble[0] / 2.0, -1))


def test_adapters_by_shape():
    assert build_adapter((32,), (32,)) is None
    assert isinstance(build_adapter((32,), (64,)), nn.Linear)
    assert isinstance(build_adapter((16, 8, 8), (32, 8, 8)), nn.Conv2d)
    with pytest.raises(ValueError, match="cannot map"):
        build_adapter((16, 4, 4), (32, 8, 8))


def test_feature_capture_keeps_named_outputs_and_removes_its_hooks():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    capture = FeatureCapture(model, ["1"])
    inputs = torch.randn(3, 4)
    model(inputs)
    torch.testing.assert_close(capture.outputs["1"], F.relu(model[0](inputs)))
    capture.remove()
    capture.outputs.clear()
    model(inputs)
    assert capture.outputs == {}
    with pytest.raises(KeyError):
        FeatureCapture(model, ["9"])


def _models(seed=0):
    torch.manual_seed(seed)
    student = build_model(ModelConfig(name="mlp", hidden_sizes=(32,)), INFO)
    teacher = freeze(build_model(ModelConfig(name="cnn", channels=(4, 8)), INFO))
    return student, teacher


def _batch(seed=1, rows=32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 64, generator=generator), torch.randint(0, 10, (rows,), generator=generator)


def _config(**settings):
    return DistillConfig.model_validate({"teachers": [{"stage": "teacher", "model": {}}], **settings})


def _parts(student, techniques, lr=0.1):
    return assemble(student, DataParallel(), Precision(), lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9),
                    techniques)


def test_alpha_zero_trains_exactly_like_cross_entropy():
    inputs, targets = _batch()
    plain, teacher = _models()
    distilled, _ = _models()
    plain_parts = _parts(plain, [])
    kd_parts = _parts(distilled, [Distillation(_config(alpha=0.0), [teacher], 64)])
    for _ in range(5):
        expected = train_step(plain_parts, inputs, targets)
        assert train_step(kd_parts, inputs, targets).item() == pytest.approx(expected.item(), abs=1e-7)
    for a, b in zip(plain.parameters(), distilled.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_step_loss_is_the_kd_formula_and_the_teacher_stays_frozen():
    inputs, targets = _batch()
    student, teacher = _models()
    before = [p.clone() for p in teacher.parameters()]
    parts = _parts(student, [Distillation(_config(temperature=3.0, alpha=0.7), [teacher], 64)], lr=0.0)
    with torch.no_grad():
        expected = kd_loss(student(inputs), teacher(inputs), targets, 3.0, 0.7)
    assert train_step(parts, inputs, targets).item() == pytest.approx(expected.item(), abs=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())


def test_cached_logits_give_the_same_training_as_running_the_teacher(tmp_path):
    inputs, targets = _batch()
    live, teacher = _models()
    cached, _ = _models()
    live_parts = _parts(live, [Distillation(_config(), [teacher], 64)])
    cached_parts = _parts(cached, [Distillation(_config(cache=True), None, 64)])
    # the cache as the Ray Data pass writes it: TeacherLogits over a pyarrow batch, from a checkpoint file
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pt")
    config = _config(cache=True, teachers=[{"checkpoint": str(tmp_path / "teacher.pt"), "model": {"name": "cnn", "channels": [4, 8]}}])
    table = pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(inputs.numpy().ravel()), 64),
                      "label": pa.array(targets.numpy())})
    column = TeacherLogits(config, INFO, PrecisionConfig())(table)[TEACHER_LOGITS]
    logits = torch.tensor(np.asarray(column.combine_chunks().flatten()).reshape(len(inputs), -1))
    torch.testing.assert_close(logits, teacher(inputs), rtol=0, atol=1e-6)
    for _ in range(4):
        expected = train_step(live_parts, inputs, targets)
        got = train_step(cached_parts, inputs, targets, {TEACHER_LOGITS: logits})
        assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    for a, b in zip(live.parameters(), cached.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_ensemble_cache_columns_hold_each_teacher_in_turn():
    inputs, targets = _batch()
    student, _ = _models()
    teachers = [_models(seed)[1] for seed in (1, 2)]
    config = DistillConfig.model_validate({"teachers": [{"stage": "a", "model": {}}, {"stage": "b", "model": {}}]})
    live = Distillation(config, teachers, 64)
    cached = Distillation(config.model_copy(update={"cache": True}), None, 64)
    outputs = student(inputs)
    loss = F.cross_entropy(outputs, targets)
    columns = torch.cat([t(inputs) for t in teachers], dim=1)
    torch.testing.assert_close(
        live.loss(loss, outputs, inputs, targets, {}), cached.loss(loss, outputs, inputs, targets, {TEACHER_LOGITS: columns})
    )


def test_hint_adapters_train_and_the_fitnets_schedule_switches_phases():
    inputs, targets = _batch()
    student, teacher = _models()
    config = _config(hints=[{"student": "layers.2", "teacher": "classifier.2", "weight": 1.0}], hint_epochs=1)
    technique = Distillation(config, [teacher], 64)
    parts = _parts(student, [technique], lr=0.05)
    adapter = technique.adapters[0]
    assert isinstance(adapter, nn.Linear) and (adapter.in_features, adapter.out_features) == (32, 64)
    assert any(p is adapter.weight for p in parts.optimizer.param_groups[1]["params"])
    start = adapter.weight.detach().clone()
    head = student.layers[3].weight.detach().clone()
    technique.on_epoch_start(0, student, parts.optimizer)
    first = train_step(parts, inputs, targets).item()
    for _ in range(30):
        last = train_step(parts, inputs, targets).item()
    assert technique.hints_only and last < 0.5 * first
    assert not torch.equal(adapter.weight, start)
    torch.testing.assert_close(student.layers[3].weight, head)  # stage 1 trains up to the guided layer only
    technique.on_epoch_start(1, student, parts.optimizer)  # stage 2: KD alone
    with torch.no_grad():
        expected = kd_loss(student(inputs), teacher(inputs), targets, 4.0, 0.9)
    parts.optimizer.param_groups[0]["lr"] = parts.optimizer.param_groups[1]["lr"] = 0.0
    assert train_step(parts, inputs, targets).item() == pytest.approx(expected.item(), abs=1e-6)
    assert "hint_loss" in technique.metrics()
    technique.teardown()


def _recipe(distill, student=None, **stage):
    return {
        "data": {"dataset": "digits"},
        "stages": [
            {"name": "teacher", "kind": "train", "model": {"name": "cnn"}},
            {"name": "student", "kind": "distill", "model": student or {"name": "mlp"}, "distill": distill, **stage},
        ],
    }


def test_recipe_gives_a_stage_teacher_its_model():
    recipe = validate_recipe(_recipe({"teachers": ["teacher"]}))
    teacher = recipe.stage("student").distill.teachers[0]
    assert teacher.stage == "teacher" and teacher.model.name == "cnn" and teacher.checkpoint is None


@pytest.mark.parametrize(("distill", "stage", "message"), [
    ({"teachers": ["student"]}, {}, "teacher 'student' is not an earlier stage"),
    ({"teachers": ["nobody"]}, {}, "teacher 'nobody' is not an earlier stage"),
    ({"teachers": [{"checkpoint": "t.pt"}]}, {}, "say which network it holds"),
    ({"teachers": ["teacher"], "cache": True, "hints": [{"student": "layers.1", "teacher": "features.1"}]}, {},
     "set distill.cache false or remove distill.hints"),
    ({"teachers": ["teacher"], "hints": [{"student": "layers.1", "teacher": "features.1"}], "hint_epochs": 5},
     {"epochs": 5}, "leaves no KD epochs"),
    ({"teachers": ["teacher"], "hint_epochs": 1}, {}, "hint_epochs needs distill.hints"),
    ({"teachers": ["teacher"], "alpha": 1.5}, {}, "alpha"),
    ({"teachers": ["teacher"], "hints": [{"student": "layers.1", "teacher": "features.1", "teacher_index": 1}]}, {},
     "there are only 1 teachers"),
])
def test_bad_distill_settings_are_rejected(distill, stage, message):
    with pytest.raises(UserError, match=message):
        validate_recipe(_recipe(distill, **stage))


def test_bad_hints_fail_before_ray(tmp_path):
    recipe = validate_recipe(_recipe({"teachers": ["teacher"], "hints": [{"student": "layers.9", "teacher": "features.1"}]}))
    with pytest.raises(UserError, match="the student has no module 'layers.9'; its modules are: layers, layers.0"):
        check_distill_stage(recipe.stage("student"), INFO)
    recipe = validate_recipe(_recipe({"teachers": ["teacher"], "hints": [{"student": "layers.1", "teacher": "features.0"}]}))
    with pytest.raises(UserError, match="cannot map student features"):
        check_distill_stage(recipe.stage("student"), INFO)
    recipe = validate_recipe(_recipe({"teachers": [{"checkpoint": str(tmp_path / "none.pt"), "model": {}}]}))
    with pytest.raises(UserError, match=r"teachers\[0\].checkpoint .* does not exist"):
        check_distill_stage(recipe.stage("student"), INFO)

