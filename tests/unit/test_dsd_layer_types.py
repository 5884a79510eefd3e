"""DSD on the models people train: every weight matrix of an LSTM, a GRU, a GPT-2-style
block (HF ``Conv1D`` weights, a tied ``lm_head``), ``nn.MultiheadAttention`` and the
built-in transformer is pruned or listed dense with its reason, and the reported sparsity
is the count of zeros in the checkpoint's weights."""

from __future__ import annotations

import pytest
import torch

from rayeffi.models.transformer import TransformerClassifier
from rayeffi.parallel import DataParallel
from rayeffi.techniques.dsd.config import DsdConfig
from rayeffi.techniques import DenseSparseDense
from rayeffi.precision import Precision
from rayeffi.techniques.dsd.layers import plan_pruning
from rayeffi.techniques.dsd.sparsity import magnitude_masks
from rayeffi.worker.build import assemble
from rayeffi.worker.step import train_step
from helpers.model_families import attention, gru, lstm, tiny_gpt2

FEATURES, CLASSES = 16, 4


def _models():
    return {
        "lstm": lambda: lstm(FEATURES, CLASSES, num_steps=4, num_layers=2),
        "gru": lambda: gru(FEATURES, CLASSES, num_steps=4),
        "gpt2": lambda: tiny_gpt2(FEATURES, CLASSES),
        "attention": lambda: attention(FEATURES, CLASSES, num_tokens=4),
        "transformer": lambda: TransformerClassifier(FEATURES, CLASSES, num_tokens=4, width=8, num_layers=2,
                                                     num_heads=2),
    }


def _batch(name):
    generator = torch.Generator().manual_seed(1)
    if name == "gpt2":
        ids = torch.randint(0, 17, (32, FEATURES), generator=generator)
        return ids, ids[:, :CLASSES].argmax(1)
    inputs = torch.randn(32, FEATURES, generator=generator)
    return inputs, inputs[:, :CLASSES].argmax(1)


def _matrices(model):
    return {name for name, p in model.named_parameters(remove_duplicate=False) if p.dim() >= 2}


@pytest.mark.parametrize("name", list(_models()))
def test_every_weight_matrix_is_pruned_or_reported(name):
    model = _models()[name]()
    plan = plan_pruning(model)
    assert _matrices(model) == set(plan.prunable) | set(plan.dense)
    assert all(plan.dense.values())  # every dense matrix has its reason
    embeddings = {n for n, reason in plan.dense.items() if reason.startswith(("embedding", "tied", "free parameter"))}
    non_embedding = _matrices(model) - embeddings
    assert len(set(plan.prunable) & non_embedding) >= 0.95 * len(non_embedding), plan.dense


def test_layer_kinds_and_reasons():
    plan = plan_pruning(lstm(FEATURES, CLASSES, num_steps=4, num_layers=2))
    assert {n: plan.blocks[n] for n in plan.prunable if n.startswith("rnn")} == {
        "rnn.weight_ih_l0": 4, "rnn.weight_hh_l0": 4, "rnn.weight_ih_l1": 4, "rnn.weight_hh_l1": 4}
    gpt = plan_pruning(tiny_gpt2(FEATURES, CLASSES))
    assert "h.0.c_attn.weight" in gpt.prunable and "h.1.mlp.c_proj.weight" in gpt.prunable
    assert gpt.dense["wte.weight"].startswith("embedding") and gpt.dense["lm_head.weight"] == "tied to wte.weight"
    with_embeddings = plan_pruning(tiny_gpt2(FEATURES, CLASSES), prune_embeddings=True)
    assert "wte.weight" in with_embeddings.prunable and "lm_head.weight" not in with_embeddings.prunable
    assert with_embeddings.dense["lm_head.weight"].startswith("tied to wte.weight (pruned once")
    transformer = plan_pruning(_models()["transformer"]())
    assert transformer.blocks["blocks.0.self_attn.in_proj_weight"] == 3
    assert "blocks.0.self_attn.out_proj.weight" in transformer.prunable
    assert transformer.dense == {"embed.position": transformer.dense["embed.position"]}
    skipped = plan_pruning(_models()["attention"](), skip=("head.*",))
    assert skipped.dense == {"head.weight": "matches dsd.skip"}


def test_gate_blocks_are_pruned_to_the_target_each():
    weight = torch.cat([torch.full((2, 3), 10.0), torch.randn(6, 3) * 0.01])  # gate 0 large, the rest small
    mask = magnitude_masks({"w": weight}, {"w": 0.5}, {"w": 4})["w"]
    assert [(~mask[2 * g:2 * g + 2]).sum().item() for g in range(4)] == [3, 3, 3, 3]


@pytest.mark.parametrize("name", list(_models()))
def test_reported_sparsity_is_the_zeros_in_the_checkpoint(name):
    torch.manual_seed(0)
    model = _models()[name]()
    technique = DenseSparseDense(DsdConfig(rounds=[0.5], dense_epochs=1, sparse_epochs=1, redense_epochs=0))
    parts = assemble(model, DataParallel(), Precision(),
                     lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), [technique])
    inputs, targets = _batch(name)
    technique.on_epoch_start(1, parts.model, parts.optimizer)
    for _ in range(3):
        train_step(parts, inputs, targets)
    metrics = technique.metrics()
    state = parts.model.state_dict()  # what the checkpoint's "model" holds
    zeros = sum((state[n] == 0).sum().item() for n in technique.weights)
    total = sum(state[n].numel() for n in technique.weights)
    assert metrics["sparsity"] == zeros / total
    assert metrics["sparsity"] == pytest.approx(0.5, abs=1e-2)
    assert all(torch.equal(state[n][~m], torch.zeros_like(state[n][~m])) for n, m in technique.masks.items())
    assert metrics["dense_layers"] == plan_pruning(_models()[name]()).dense
