"""A language model through real Ray: 2-worker Train (DDP) and the sync parameter server
(SGD with momentum on the servers, nothing stale) equal one process on the global batch.
A Hugging Face BERT classifier as built, on variable-length token rows with their attention
mask (2 workers), then distilled into a one-tensor student through the soft-label cache.
A pipelined language model's numerics: tests/unit/test_lm_task_gloo.py; the language_model
example (local mode) and MNIST with a CNN (the mnist_cnn example, on Ray):
tests/ray/test_examples.py."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rayeffi.checkpoint import load_checkpoint
from rayeffi.data.info import DatasetInfo
from rayeffi.models import build_model
from rayeffi.recipe import validate_recipe
from rayeffi.driver.run import run_recipe
from rayeffi.task import LanguageModeling

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]

ROWS, SEQ_LEN, VOCAB, STEPS, LR, MOMENTUM = 64, 12, 16, 3, 0.5, 0.9
MODEL = {"name": "lm", "d_model": 16, "num_layers": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def token_rows(tmp_path_factory):
    """Rows of SEQ_LEN + 1 tokens (every position scored, so each worker holds as many tokens)."""
    root = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    starts = rng.integers(0, VOCAB, ROWS)
    rows = [[(start + i * step) % VOCAB for i in range(SEQ_LEN + 1)] for start, step in zip(starts, rng.integers(1, 3, ROWS))]
    pq.write_table(pa.table({"ids": pa.array(rows)}), root / "train.parquet")
    pq.write_table(pa.table({"ids": pa.array(rows[:16])}), root / "val.parquet")
    return root


def _recipe(root, parallel=None, num_workers=2):
    return validate_recipe({
        "seed": 0,
        "task": "language_modeling",
        "data": {"dataset": "parquet", "path": str(root / "train.parquet"), "val_path": str(root / "val.parquet"),
                 "feature_column": "ids", "seq_len": SEQ_LEN, "vocab_size": VOCAB, "batch_size": ROWS,
                 "shuffle": False},
        "model": MODEL,
        "optimizer": {"name": "sgd", "lr": LR, "momentum": MOMENTUM},
        "scaling": {"num_workers": num_workers, "resources_per_worker": {"CPU": 0.5}},
        "parallel": parallel or {"strategy": "data_parallel"},
        "stages": [{"name": "train", "kind": "train", "epochs": STEPS}],
    })


def _one_process(root):
    """Full-batch SGD with momentum on every row, STEPS times, at seed 0."""
    tokens = torch.tensor(pq.read_table(root / "train.parquet")["ids"].to_pylist())
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    torch.manual_seed(0)
    model = build_model(_recipe(root).stages[0].model, DatasetInfo(SEQ_LEN, VOCAB, None, ROWS, 16, vocab_size=VOCAB))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    losses = []
    for _ in range(STEPS):
        loss = LanguageModeling().loss(model(inputs), labels)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.state_dict(), losses


@pytest.mark.parametrize("parallel", [
    {"strategy": "data_parallel"},
    {"strategy": "param_server", "mode": "sync", "num_servers": 2, "server_optimizer": "momentum"},
], ids=["ddp", "param-server-sync"])
def test_language_model_matches_one_process(token_rows, tmp_path, parallel):
    summary = run_recipe(_recipe(token_rows, parallel), tmp_path)
    stage = summary["stages"][0]
    reference, losses = _one_process(token_rows)
    params = load_checkpoint(stage["checkpoint"])["model"]
    for name, value in reference.items():
        torch.testing.assert_close(params[name], value, rtol=0, atol=1e-5)
    assert [row["train_loss"] for row in stage["history"]] == pytest.approx(losses, abs=1e-5)
    assert stage["metrics"]["val_perplexity"] > 1 and "val_accuracy" not in stage["metrics"]
    if parallel["strategy"] == "param_server":  # one full-batch step per epoch, applied once on each shard
        assert [row["server_updates"] for row in stage["history"]] == [1] * STEPS
        assert stage["param_server"]["staleness_histogram"] == {"0": 2 * 2 * STEPS}  # 2 workers x 2 shards x steps


def test_hf_bert_classifies_variable_length_tokens_then_teaches_a_one_tensor_student(tmp_path):
    pytest.importorskip("transformers", reason="the Hugging Face tier needs transformers (the test extra)")
    from helpers.sequences import write_token_classes

    train, val = write_token_classes(tmp_path / "data")  # label: whether token 7 occurs; 3 to 12 tokens
    summary = run_recipe(validate_recipe({
        "seed": 0,
        "data": {"dataset": "parquet", "path": train, "val_path": val, "feature_column": "ids", "batch_size": 32},
        "model": {"name": "helpers.sequences:token_bag"},  # the student's: its forward takes one tensor
        "optimizer": {"name": "adamw", "lr": 0.003},
        "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 0.5}},
        "stages": [
            {"name": "bert", "kind": "train", "epochs": 3,
             "model": {"name": "rayeffi.models.hf:bert_classifier",
                       "kwargs": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}}},
            {"name": "student", "kind": "distill", "epochs": 3, "optimizer": {"name": "adamw", "lr": 0.02},
             "distill": {"teachers": [{"stage": "bert"}], "temperature": 2.0, "alpha": 0.5, "cache": True}},
        ],
    }), tmp_path / "out")
    bert, student = summary["stages"]
    assert bert["data_info"]["num_features"] == 12  # padded to the longest row
    assert bert["metrics"]["val_accuracy"] > 0.9  # chance is 0.5
    assert student["metrics"]["val_accuracy"] > 0.75 and student["metrics"]["kd_soft_loss"] > 0
