"""A Hugging Face BERT classifier on padded rows, with its attention mask: 2-process data
parallel training (gloo) == one process on the same global batches (losses and weights)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("transformers", reason="the Hugging Face tier needs transformers (the test extra)")

from rayeffi.models.hf import bert_classifier  # noqa: E402
from rayeffi.parallel import DataParallel  # noqa: E402
from rayeffi.precision import Precision  # noqa: E402
from rayeffi.worker.build import assemble  # noqa: E402
from rayeffi.worker.step import eval_step, train_step  # noqa: E402
from helpers.gloo import end_rank, free_port  # noqa: E402

STEPS, GLOBAL_BATCH, SEQ_LEN, VOCAB = 3, 8, 9, 11


def _model():
    torch.manual_seed(0)
    return bert_classifier(SEQ_LEN, 3, vocab_size=VOCAB)


def _data():
    """``[STEPS, B, T]`` ids padded with 0, their masks, and a class per row (whether token 7 occurs)."""
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, VOCAB, (STEPS, GLOBAL_BATCH, SEQ_LEN), generator=generator)
    lengths = torch.randint(1, SEQ_LEN + 1, (STEPS, GLOBAL_BATCH), generator=generator)
    mask = (torch.arange(SEQ_LEN) < lengths[..., None]).long()
    ids = tokens * mask
    return ids, mask, ((ids == 7) & (mask == 1)).any(-1).long() + (lengths > SEQ_LEN // 2).long()


def _optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)


def _train(parts, rows=slice(None)):
    ids, mask, labels = _data()
    losses = [train_step(parts, ids[s, rows], labels[s, rows], {"input.attention_mask": mask[s, rows]}).item()
              for s in range(STEPS)]
    evaluated = eval_step(parts, ids[0, rows], labels[0, rows], {"input.attention_mask": mask[0, rows]})
    return torch.tensor(losses), evaluated.float()


def _ddp_rank(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    strategy = DataParallel(rank, world_size)
    parts = assemble(_model(), strategy, Precision(), _optimizer)
    share = GLOBAL_BATCH // world_size
    losses, evaluated = _train(parts, slice(rank * share, (rank + 1) * share))
    losses = strategy.all_reduce_sum(losses) / world_size
    evaluated = strategy.all_reduce_sum(evaluated)
    if rank == 0:
        torch.save({"losses": losses, "eval": evaluated, "model": strategy.unwrap(parts.model).state_dict()},
                   out_dir / "run.pt")
    end_rank()


def test_padded_bert_classifier_under_ddp_matches_one_process(tmp_path):
    mp.start_processes(_ddp_rank, args=(2, free_port(), tmp_path), nprocs=2, start_method="fork")
    parts = assemble(_model(), DataParallel(), Precision(), _optimizer)
    losses, evaluated = _train(parts)
    result = torch.load(tmp_path / "run.pt")
    torch.testing.assert_close(result["losses"], losses, rtol=0, atol=1e-5)
    torch.testing.assert_close(result["eval"], evaluated, rtol=0, atol=1e-4)  # [loss sum, correct, rows]
    single = parts.model.state_dict()
    for name in single:
        torch.testing.assert_close(result["model"][name], single[name], rtol=0, atol=1e-5)
    assert not torch.equal(single["classifier.weight"], _model().state_dict()["classifier.weight"])  # it trained
