"""Hugging Face models as built (from a config, no weights downloaded): a BERT and a GPT-2
sequence classifier take the digits as token ids, train under bf16 through the real worker
build, with DSD pruning them (HF ``Conv1D`` included) and a teacher of the same family
distilling into them. Skipped without ``transformers`` (``pip install -e '.[test]'``)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the Hugging Face tier needs transformers (the test extra)")

from rayeffi.checkpoint import save_atomic  # noqa: E402
from rayeffi.data.info import DatasetInfo  # noqa: E402
from rayeffi.models import build_model, check_model  # noqa: E402
from rayeffi.parallel import DataParallel  # noqa: E402
from rayeffi.recipe import validate_recipe  # noqa: E402
from rayeffi.recipe.sections import ModelConfig  # noqa: E402
from rayeffi.techniques.dsd.layers import plan_pruning  # noqa: E402
from rayeffi.precision import needs_onednn_off, reduced_precision_autocast  # noqa: E402
from rayeffi.worker.build import build_worker  # noqa: E402
from rayeffi.worker.step import eval_step, train_step  # noqa: E402

INFO = DatasetInfo(num_features=64, num_classes=10, image_shape=(1, 8, 8), num_train=64, num_val=16)
MODELS = {"bert": "rayeffi.models.hf:bert_classifier", "gpt2": "rayeffi.models.hf:gpt2_classifier"}


def _rows(num_rows=16):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 17, (num_rows, 64), generator=generator).float()  # as the data pipeline carries them
    return ids, torch.randint(0, 10, (num_rows,), generator=generator)


@pytest.mark.parametrize("family", list(MODELS))
def test_hf_model_as_built_passes_the_driver_check_under_bf16(family):
    bf16 = lambda model: reduced_precision_autocast("cpu", torch.bfloat16, needs_onednn_off(model, "cpu"))  # noqa
    model = check_model(ModelConfig(name=MODELS[family]), INFO, _rows(2), bf16)
    plan = plan_pruning(model)
    assert all(reason.startswith("embedding") for reason in plan.dense.values())  # every other matrix is pruned


@pytest.mark.parametrize("family", list(MODELS))
def test_hf_model_trains_with_dsd_and_distillation_under_bf16(family, tmp_path):
    torch.manual_seed(5)
    teacher = build_model(ModelConfig(name=MODELS[family]), INFO)
    save_atomic({"model": teacher.state_dict()}, tmp_path / "teacher.pt")
    stage = validate_recipe({
        "model": {"name": MODELS[family]}, "precision": "bf16", "data": {"batch_size": 16},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "stages": [{"name": "s", "kind": "train", "techniques": [
            {"name": "dsd", "rounds": [0.5], "dense_epochs": 1, "sparse_epochs": 1, "redense_epochs": 0},
            {"name": "distill", "teachers": [{"checkpoint": str(tmp_path / "teacher.pt"),
                                              "model": {"name": MODELS[family]}}], "temperature": 2.0, "alpha": 0.5},
        ]}],
    }).stages[0]
    parts, _ = build_worker(stage, INFO, DataParallel())
    dsd, distill = parts.techniques
    for technique in parts.techniques:
        technique.on_epoch_start(1, parts.model, parts.optimizer)  # the sparse phase
    inputs, targets = _rows()
    losses = [train_step(parts, inputs, targets).item() for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    metrics = {**dsd.metrics(), **distill.metrics()}
    state = parts.model.state_dict()
    zeros = sum((state[name] == 0).sum().item() for name in dsd.weights)
    assert metrics["sparsity"] == zeros / sum(state[name].numel() for name in dsd.weights)
    assert metrics["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert {"kd_soft_loss", "kd_ce_loss"} <= set(metrics)
    parts.model.eval()
    loss_sum, correct, _ = eval_step(parts, inputs, targets)
    assert torch.isfinite(loss_sum) and 0 <= correct <= len(targets)


def test_hf_causal_lm_trains_as_a_language_model_with_dsd_and_per_token_kd(tmp_path):
    """GPT2LMHeadModel as built: int64 ids in, a CausalLMOutput out, padded labels masked."""
    lm_info = DatasetInfo(num_features=12, num_classes=20, image_shape=None, num_train=64, num_val=16, vocab_size=20)
    name = "rayeffi.models.hf:gpt2_lm"
    torch.manual_seed(5)
    save_atomic({"model": build_model(ModelConfig(name=name), lm_info).state_dict()}, tmp_path / "teacher.pt")
    stage = validate_recipe({
        "task": "language_modeling", "model": {"name": name}, "data": {"batch_size": 16},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "stages": [{"name": "s", "kind": "train", "techniques": [
            {"name": "dsd", "rounds": [0.5], "dense_epochs": 1, "sparse_epochs": 1, "redense_epochs": 0},
            {"name": "distill", "teachers": [{"checkpoint": str(tmp_path / "teacher.pt"), "model": {"name": name}}],
             "temperature": 2.0, "alpha": 0.5},
        ]}],
    }).stages[0]
    parts, _ = build_worker(stage, lm_info, DataParallel())
    assert parts.task.name == "language_modeling"
    for technique in parts.techniques:
        technique.on_epoch_start(1, parts.model, parts.optimizer)  # the sparse phase
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 20, (16, 12), generator=generator)
    labels = torch.roll(ids, -1, dims=1)
    labels[:8, 6:] = -100  # half the rows padded
    losses = [train_step(parts, ids, labels).item() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    sums = eval_step(parts, ids, labels)
    assert sums[2].item() == (labels != -100).sum().item()  # scored tokens only
    dsd, distill = parts.techniques
    assert dsd.metrics()["sparsity"] == pytest.approx(0.5, abs=1e-3) and "kd_soft_loss" in distill.metrics()
