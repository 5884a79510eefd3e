"""Activation checkpointing: the step's gradients and weights are the plain model's, for every
family that lists its blocks, while the activations held for the backward shrink."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rayeffi.bench.memory import step_memory
from rayeffi.errors import UserError
from rayeffi.models.checkpointing import checkpoint_blocks, model_blocks
from rayeffi.models.convnet import ConvNet
from rayeffi.models.lm import TransformerLM
from rayeffi.models.mlp import MLP
from rayeffi.models.units import sequential_units
from rayeffi.parallel import DataParallel
from rayeffi.precision import FP32
from rayeffi.recipe.compat import check_compatibility
from rayeffi.task import CLASSIFICATION, LanguageModeling
from rayeffi.worker.build import assemble
from rayeffi.worker.step import train_step


def _rows(n=16, features=64, classes=10):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(n, features, generator=generator), torch.randint(0, classes, (n,), generator=generator)


def _tokens(n=8, seq=12, vocab=17, classes=None):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n, seq), generator=generator)
    targets = torch.randint(0, classes or vocab, (n,) if classes else (n, seq), generator=generator)
    return ids, targets


class NormNet(nn.Module):
    """A user model with batch norm that lists its units."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.layers(x)

    def pipeline_units(self):
        return sequential_units(self.layers, "layers.")


def _bert():
    pytest.importorskip("transformers")
    from rayeffi.models.hf import bert_classifier

    return bert_classifier(12, 3, dropout=0.1)


FAMILIES = {  # name: (model with dropout where it has one, batch, task)
    "mlp": (lambda: MLP(64, 10, (32, 32), dropout=0.2), _rows, CLASSIFICATION),
    "cnn": (lambda: ConvNet((1, 8, 8), 10, dropout=0.2), _rows, CLASSIFICATION),
    "lm": (lambda: TransformerLM(17, 12, d_model=32, num_layers=3, dropout=0.1), _tokens, LanguageModeling()),
    "batch_norm": (NormNet, _rows, CLASSIFICATION),
    "hf_bert": (_bert, lambda: _tokens(classes=3), CLASSIFICATION),
}


def _train(model, batch, task, steps=3):
    torch.manual_seed(1)  # dropout draws the same masks in both arms
    parts = assemble(model, DataParallel(), FP32(), lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
                     task=task)
    losses = [float(train_step(parts, *batch)) for _ in range(steps)]
    return losses, model.state_dict()


@pytest.mark.parametrize("family, every", [(family, 1) for family in FAMILIES] + [("lm", 2), ("mlp", 2)])
def test_checkpointed_steps_match_the_plain_ones(family, every):
    build, batch, task = FAMILIES[family]
    torch.manual_seed(0)
    plain = build()
    checkpointed = copy.deepcopy(plain)
    assert checkpoint_blocks(checkpointed, every)
    plain_losses, plain_state = _train(plain, batch(), task)
    losses, state = _train(checkpointed, batch(), task)
    assert losses == pytest.approx(plain_losses, abs=1e-5)
    assert list(state) == list(plain_state)  # same keys: checkpoints and init_from load as before
    for name, value in plain_state.items():  # running statistics of batch norm included
        torch.testing.assert_close(state[name], value, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["mlp", "cnn", "lm"])
def test_checkpointing_cuts_the_activations_held_for_the_backward(family):
    build, batch, task = FAMILIES[family]
    torch.manual_seed(0)
    plain = build()
    checkpointed = copy.deepcopy(plain)
    checkpoint_blocks(checkpointed)
    held, _ = step_memory(plain, *batch(64), task) if family != "lm" else step_memory(plain, *batch(), task)
    held_checkpointed, _ = (step_memory(checkpointed, *batch(64), task) if family != "lm"
                            else step_memory(checkpointed, *batch(), task))
    assert held_checkpointed < 0.6 * held


def test_blocks_start_at_a_layer_with_weights_and_every_k_picks_the_kth():
    assert [block.name for block in model_blocks(ConvNet((1, 8, 8), 10))] == [
        "features.0", "features.2", "classifier.0", "classifier.3"]  # conv+relu, conv+relu+pool, flatten+fc+relu, fc
    assert [len(block.modules) for block in model_blocks(ConvNet((1, 8, 8), 10))] == [2, 3, 3, 1]
    lm = TransformerLM(17, 12, d_model=16, num_layers=2)
    assert checkpoint_blocks(lm, every=2) == ["blocks.0", "head"]  # embed, blocks.0, blocks.1, head: the 2nd, 4th


def test_a_model_without_blocks_or_with_too_few_is_refused():
    with pytest.raises(UserError, match="lists no blocks: give it a pipeline_units"):
        checkpoint_blocks(nn.Sequential(nn.Linear(4, 2)))
    with pytest.raises(UserError, match="every 9 is more than the model's 3 blocks"):
        checkpoint_blocks(MLP(8, 2, (4, 4)), every=9)


def test_recipe_keys_short_forms_inheritance_and_refusals():
    from rayeffi.recipe.models import Recipe

    def stage(**top):
        raw = {"data": {"dataset": "digits"}, "stages": [{"name": "s", "kind": "train"}], **top}
        return Recipe.model_validate(raw).stages[0]

    assert stage().activation_checkpointing is None and stage().compile is None
    assert stage(activation_checkpointing=True).activation_checkpointing.every == 1
    assert stage(activation_checkpointing={"every": 2}).activation_checkpointing.every == 2
    assert stage(compile=True).compile.mode == "default"
    assert stage(compile={"mode": "max-autotune", "fullgraph": True}).compile.fullgraph
    off = Recipe.model_validate({"compile": True, "stages": [{"name": "s", "kind": "train", "compile": False}]})
    assert off.stages[0].compile is None  # a stage turns the recipe's compile off
    with pytest.raises(ValueError, match="every"):
        stage(activation_checkpointing={"every": 0})
    with pytest.raises(ValueError, match="mode"):
        stage(compile={"mode": "fastest"})
    for strategy in ("pipeline", "intra_layer", "param_server"):
        for key in ("compile", "activation_checkpointing"):
            with pytest.raises(ValueError, match=f"parallel.strategy {strategy} with {key}: .*not supported yet"):
                stage(**{key: True, "parallel": {"strategy": strategy}})
