"""``compile``: the compiled step matches the eager one, DSD's phase changes build no graph,
distillation's teacher is compiled once in eval mode, and a local-mode stage trains compiled."""

from __future__ import annotations

import copy

import pytest
import torch

from rayeffi.models.compiled import compile_model, compiled_graphs
from rayeffi.models.lm import TransformerLM
from rayeffi.models.mlp import MLP
from rayeffi.parallel import DataParallel
from rayeffi.precision import PRECISIONS
from rayeffi.task import CLASSIFICATION, LanguageModeling
from rayeffi.worker.build import assemble
from rayeffi.worker.step import eval_step, train_step


def _train(model, inputs, targets, task=CLASSIFICATION, precision="fp32", steps=3, techniques=()):
    parts = assemble(model, DataParallel(), PRECISIONS[precision](),
                     lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), list(techniques), task)
    losses = [float(train_step(parts, inputs, targets)) for _ in range(steps)]
    model.eval()
    return losses, eval_step(parts, inputs, targets), parts


def test_a_compiled_step_matches_the_eager_one():
    torch.manual_seed(0)
    eager = MLP(16, 4, (16,))
    compiled = compile_model(copy.deepcopy(eager))
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.rand(8, 16, generator=generator), torch.randint(0, 4, (8,), generator=generator)
    before = compiled_graphs()
    losses, sums, _ = _train(compiled, inputs, targets)
    eager_losses, eager_sums, _ = _train(eager, inputs, targets)
    assert losses == pytest.approx(eager_losses, abs=1e-4)
    torch.testing.assert_close(sums, eager_sums, atol=1e-4, rtol=0)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no _orig_mod. prefix
    for name, value in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[name], value, atol=1e-4, rtol=0)
    assert compiled_graphs() - before == 2  # training, then evaluation; the steps after the first reuse it


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_compiled_language_model_matches_the_eager_one(precision):
    torch.manual_seed(0)
    eager = TransformerLM(17, 12, d_model=32, num_layers=2)
    compiled = compile_model(copy.deepcopy(eager))
    generator = torch.Generator().manual_seed(0)
    ids, targets = torch.randint(0, 17, (8, 12), generator=generator), torch.randint(0, 17, (8, 12), generator=generator)
    losses, _, _ = _train(compiled, ids, targets, LanguageModeling(), precision)
    eager_losses, _, _ = _train(eager, ids, targets, LanguageModeling(), precision)
    assert losses == pytest.approx(eager_losses, abs=1e-4 if precision == "fp32" else 2e-2)


@pytest.mark.slow
def test_dsd_phase_changes_build_no_graph():
    from rayeffi.bench.compile import dsd_graphs

    first, sparse, redense = dsd_graphs()
    assert first >= 1 and sparse == 0 and redense == 0  # masks act on the weights after the step, not in the graph


@pytest.mark.slow
def test_the_teacher_is_compiled_once_in_eval_mode():
    from rayeffi.techniques.distill import Distillation, freeze
    from rayeffi.techniques.distill.config import DistillConfig

    torch.manual_seed(7)
    teacher = freeze(MLP(6, 3, (24,)))  # a class of its own: TorchDynamo skips a bare torch.nn container
    config = DistillConfig.model_validate({"teachers": [{"stage": "teacher", "model": {}}], "alpha": 0.5,
                                           "temperature": 2.0})
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.rand(8, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator)
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        distill = Distillation(config, [copy.deepcopy(teacher)], num_features=6)
        student = MLP(6, 3, (8,))
        if compiled:
            for module in distill.inference_modules():
                compile_model(module)
        before = compiled_graphs()
        parts = assemble(student, DataParallel(), PRECISIONS["fp32"](),
                         lambda m: torch.optim.SGD(m.parameters(), lr=0.1), [distill])
        distill.on_epoch_start(0, parts.model, parts.optimizer)
        first = float(train_step(parts, inputs, targets))
        after_first = compiled_graphs()
        runs[compiled] = [first] + [float(train_step(parts, inputs, targets)) for _ in range(3)]
        if compiled:
            assert after_first - before == 1 and compiled_graphs() == after_first  # once, then reused
            assert not distill.teachers[0].training
    assert runs[True] == pytest.approx(runs[False], abs=1e-4)


@pytest.mark.slow
def test_a_local_mode_stage_trains_compiled_with_the_eager_metrics(tmp_path, capsys):
    import rayeffi

    recipe = {"name": "q", "data": {"dataset": "digits", "batch_size": 64, "max_samples": 256},
              "model": {"name": "mlp", "hidden_sizes": [32]}, "optimizer": {"name": "sgd", "lr": 0.1},
              "scaling": {"num_workers": 0}, "stages": [{"name": "train", "kind": "train", "epochs": 2}]}
    eager = rayeffi.run(recipe, out=tmp_path / "eager")
    compiled = rayeffi.run({**recipe, "compile": True}, out=tmp_path / "compiled")
    assert "compile: the first step took" in capsys.readouterr().out
    for name in ("train_loss", "val_loss", "val_accuracy"):
        assert compiled.metrics[name] == pytest.approx(eager.metrics[name], abs=1e-4)


def test_a_model_whose_compiled_gradients_go_wrong_is_refused_before_training(tmp_path, capsys, monkeypatch):
    """The driver compares one worker's batch of compiled gradients with eager ones: a compiled
    backward that drops a layer's gradients (as torch 2.13's CPU backend was seen to for a CNN's
    convolutions) is one error line naming the parameter, before any worker starts."""
    from rayeffi.cli import main

    def zero_first_gradient(model, mode="default", fullgraph=False):  # a compile whose backward goes wrong
        next(model.parameters()).register_hook(torch.zeros_like)
        return model

    monkeypatch.setattr("rayeffi.models.compiled.compile_model", zero_first_gradient)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {dataset: digits, batch_size: 32}\nmodel: {name: mlp, hidden_sizes: [16]}\n"
                      "compile: true\nscaling: {num_workers: 0}\nstages: [{name: s, kind: train, epochs: 1}]\n")
    assert main(["validate", str(recipe)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stages.s.compile: torch "), lines
    assert "(parameter layers.1.weight: compiled gradient up to 0 against" in lines[0]
    assert lines[0].endswith("training would go wrong: set compile: false")
