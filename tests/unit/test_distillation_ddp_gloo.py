"""Distillation under data parallelism and mixed precision.

Two gloo processes distilling with a FitNets hint (its adapter lives outside DDP, so
the technique broadcasts and all-reduces it itself) end with the same student and
adapter as one process on the global batch. Under bf16 the frozen teacher computes
in bf16 inside the step's autocast, and the student still learns.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayeffi.data.info import DatasetInfo
from rayeffi.models import build_model
from rayeffi.parallel import DataParallel
from rayeffi.techniques.distill.config import DistillConfig
from rayeffi.recipe.sections import ModelConfig
from rayeffi.precision import PRECISIONS, Precision
from rayeffi.techniques.distill import Distillation, freeze
from rayeffi.worker.build import assemble
from rayeffi.worker.step import train_step
from helpers.gloo import end_rank, free_port

INFO = DatasetInfo(num_features=64, num_classes=10, image_shape=(1, 8, 8), num_train=64, num_val=16)
STEPS, GLOBAL_BATCH = 5, 32
CONFIG = {"teachers": [{"stage": "teacher", "model": {}}], "temperature": 3.0, "alpha": 0.8,
          "hints": [{"student": "layers.2", "teacher": "classifier.2", "weight": 0.5}]}


def _models():
    torch.manual_seed(0)
    student = build_model(ModelConfig(name="mlp", hidden_sizes=(32,)), INFO)
    teacher = freeze(build_model(ModelConfig(name="cnn", channels=(4, 8)), INFO))
    return student, teacher


def _data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, GLOBAL_BATCH, 64, generator=generator), torch.randint(0, 10, (STEPS, GLOBAL_BATCH), generator=generator)


def _train(rank, world_size, port, out):
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    student, teacher = _models()
    if rank == 1:  # rank 0's adapter must win the broadcast in setup
        torch.manual_seed(99)
    strategy = DataParallel(rank, world_size)
    technique = Distillation(DistillConfig.model_validate(CONFIG), [teacher], INFO.num_features)
    parts = assemble(student, strategy, Precision(), lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
                     [technique])
    model, optimizer = parts.model, parts.optimizer
    inputs, targets = _data()
    share = GLOBAL_BATCH // world_size
    rows = slice(rank * share, (rank + 1) * share)
    for step in range(STEPS):
        train_step(parts, inputs[step, rows], targets[step, rows])
    torch.save({"student": strategy.unwrap(model).state_dict(), "adapter": technique.adapters.state_dict()},
               f"{out}-rank{rank}.pt")
    technique.teardown()
    if world_size > 1:
        end_rank()


def test_two_gloo_workers_distil_like_one_process(tmp_path):
    _train(0, 1, None, tmp_path / "single")
    mp.spawn(_train, args=(2, free_port(), tmp_path / "ddp"), nprocs=2)
    single = torch.load(tmp_path / "single-rank0.pt")
    untrained, _ = _models()
    assert any(not torch.equal(single["student"][k], v) for k, v in untrained.state_dict().items())
    for rank in (0, 1):
        ddp = torch.load(tmp_path / f"ddp-rank{rank}.pt")
        for part in ("student", "adapter"):
            for name, value in single[part].items():
                torch.testing.assert_close(ddp[part][name], value, rtol=0, atol=1e-5)


def _distil_losses(policy, steps=20):
    student, teacher = _models()
    seen = []
    teacher.classifier[-1].register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    config = DistillConfig.model_validate({**CONFIG, "hints": []})
    technique = Distillation(config, [teacher], INFO.num_features)
    parts = assemble(student, DataParallel(), PRECISIONS[policy](),
                     lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), [technique])
    inputs, targets = _data()
    return [train_step(parts, inputs[0], targets[0]).item() for _ in range(steps)], set(seen)


def test_bf16_teacher_runs_in_bf16_and_the_student_learns_as_in_fp32():
    fp32, fp32_dtypes = _distil_losses("fp32")
    bf16, bf16_dtypes = _distil_losses("bf16")
    assert fp32_dtypes == {torch.float32} and bf16_dtypes == {torch.bfloat16}
    assert fp32[-1] < 0.85 * fp32[0] and bf16[-1] < 0.85 * bf16[0]
    assert abs(bf16[-1] - fp32[-1]) < 0.05 * fp32[-1]  # bf16 rounding, not a different optimum
