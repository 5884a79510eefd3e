"""A language model with padded rows: data parallel and pipelined training == one process.

The loss is the mean over the global batch's real tokens. Each rank's rows carry a
different number of real tokens (rows of random length, padded at the end), so a
per-rank mean would not match: this pins ``Strategy.mean_count`` (task.py).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayeffi.data.info import DatasetInfo
from rayeffi.models.lm import TransformerLM
from rayeffi.parallel import DataParallel, Pipeline
from rayeffi.recipe.pipeline import PipelineConfig
from rayeffi.task import IGNORE_INDEX, LanguageModeling
from rayeffi.precision import Precision
from rayeffi.worker.build import assemble
from rayeffi.worker.step import eval_step, train_step
from helpers.gloo import end_rank, free_port

STEPS, GLOBAL_BATCH, SEQ_LEN, VOCAB = 4, 16, 8, 13
TASK = LanguageModeling()


def _model():
    torch.manual_seed(0)
    return TransformerLM(VOCAB, SEQ_LEN, d_model=16, num_layers=2, num_heads=2)


def _data():
    """``[STEPS, B, T]`` token ids padded with 0 and next-token labels with IGNORE_INDEX on padding."""
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, VOCAB, (STEPS, GLOBAL_BATCH, SEQ_LEN + 1), generator=generator)
    lengths = torch.randint(2, SEQ_LEN + 2, (STEPS, GLOBAL_BATCH), generator=generator)
    lengths[:, : GLOBAL_BATCH // 2] = 2  # the first half of each batch is nearly all padding
    present = torch.arange(SEQ_LEN + 1) < lengths[..., None]
    inputs = torch.where(present[..., :-1], tokens[..., :-1], 0)
    labels = torch.where(present[..., 1:], tokens[..., 1:], IGNORE_INDEX)
    return inputs, labels


def _optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)


def _single():
    parts = assemble(_model(), DataParallel(), Precision(), _optimizer, task=TASK)
    inputs, labels = _data()
    losses = [train_step(parts, inputs[s], labels[s]).item() for s in range(STEPS)]
    return losses, parts.model.state_dict(), eval_step(parts, inputs[0], labels[0]).float()


def _ddp_rank(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    strategy = DataParallel(rank, world_size)
    parts = assemble(_model(), strategy, Precision(), _optimizer, task=TASK)
    inputs, labels = _data()
    share = GLOBAL_BATCH // world_size
    rows = slice(rank * share, (rank + 1) * share)
    losses = torch.tensor([train_step(parts, inputs[s, rows], labels[s, rows]).item() for s in range(STEPS)])
    losses = strategy.all_reduce_sum(losses) / world_size  # each rank: its tokens' share of the global mean
    evaluated = strategy.all_reduce_sum(eval_step(parts, inputs[0, rows], labels[0, rows]).float())
    if rank == 0:
        torch.save({"losses": losses.tolist(), "model": strategy.unwrap(parts.model).state_dict(),
                    "eval": evaluated}, out_dir / "run.pt")
    end_rank()


def _pipeline_rank(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    info = DatasetInfo(SEQ_LEN, VOCAB, None, STEPS * GLOBAL_BATCH, GLOBAL_BATCH, vocab_size=VOCAB)
    strategy = Pipeline(rank, world_size, torch.device("cpu"), PipelineConfig(num_stages=2, num_microbatches=4), info)
    parts = assemble(_model(), strategy, Precision(), _optimizer, task=TASK)
    inputs, labels = _data()
    losses = []
    for s in range(STEPS):
        step_inputs, step_labels, _ = strategy.local_batch(inputs[s], labels[s], {})
        losses.append(train_step(parts, step_inputs, step_labels).item())
    losses = strategy.all_reduce_sum(torch.tensor(losses)) / strategy.replicas
    full = strategy.training_state(parts)["model"]
    eval_inputs, eval_labels, _ = strategy.local_batch(inputs[0], labels[0], {})
    evaluated = strategy.all_reduce_sum(eval_step(parts, eval_inputs, eval_labels).float())
    if rank == 0:
        torch.save({"losses": losses.tolist(), "model": full, "eval": evaluated}, out_dir / "run.pt")
    end_rank()


@pytest.mark.parametrize("how, world_size", [("ddp", 2), ("pipeline", 2), ("pipeline", 4)],
                         ids=["ddp-2", "pipeline-2-stages", "pipeline-2-stages-x-2-replicas"])
def test_padded_language_model_matches_one_process(tmp_path, how, world_size):
    rank_fn = _ddp_rank if how == "ddp" else _pipeline_rank
    mp.start_processes(rank_fn, args=(world_size, free_port(), tmp_path), nprocs=world_size, start_method="fork")
    single_losses, single, single_eval = _single()
    result = torch.load(tmp_path / "run.pt")
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(single_losses), rtol=0, atol=1e-5)
    torch.testing.assert_close(result["eval"], single_eval, rtol=0, atol=1e-4)  # [loss sum, correct, tokens]
    for name in single:
        torch.testing.assert_close(result["model"][name], single[name], rtol=0, atol=1e-5)
    assert single_losses[-1] < single_losses[0]  # it did train


def test_the_loss_is_the_mean_over_real_tokens_of_the_whole_batch():
    """Two halves with different token counts, each divided by the mean count, average to the
    global per-token mean; each half's own mean would not."""
    torch.manual_seed(0)
    inputs, labels = _data()
    logits = torch.randn(GLOBAL_BATCH, SEQ_LEN, VOCAB)
    whole = TASK.loss(logits, labels[0])
    halves = [slice(0, GLOBAL_BATCH // 2), slice(GLOBAL_BATCH // 2, GLOBAL_BATCH)]
    mean_count = TASK.count(labels[0]).float() / 2
    shared = sum(TASK.loss(logits[h], labels[0, h], mean_count) for h in halves) / 2
    own = sum(TASK.loss(logits[h], labels[0, h]) for h in halves) / 2
    torch.testing.assert_close(shared, whole)
    assert abs(own - whole) > 1e-3
    assert TASK.count(labels[0]) == (labels[0] != IGNORE_INDEX).sum()
