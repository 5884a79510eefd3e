"""The pipeline composes with the other slots: DSD masks per stage, one fp16 loss scale,
bf16 autocast per stage, and per-stage checkpoints that resume exactly (2 gloo ranks)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayeffi.parallel import DataParallel, Pipeline
from rayeffi.techniques.dsd.config import DsdConfig
from rayeffi.recipe.pipeline import PipelineConfig
from rayeffi.techniques import DenseSparseDense, Technique
from rayeffi.precision import PRECISIONS
from rayeffi.worker.build import assemble
from rayeffi.worker.step import train_step
from helpers.gloo import end_rank, free_port

STEPS, BATCH = 4, 32


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 4))


def _data():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(2 * STEPS, BATCH, 12, generator=generator)
    return inputs, inputs[..., :4].argmax(-1)


class PoisonGradient(Technique):
    """Puts an inf into one gradient of the worker holding ``param`` at optimizer step ``step``."""

    name = "poison"

    def __init__(self, param: str, step: int):
        self.param, self.step, self.calls = param, step, 0

    def after_backward(self, model):
        params = dict(model.named_parameters())
        if self.calls == self.step and self.param in params:
            params[self.param].grad.view(-1)[0] = float("inf")
        self.calls += 1

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def _techniques(kind):
    if kind == "dsd":
        return [DenseSparseDense(DsdConfig(rounds=[0.5], dense_epochs=1, sparse_epochs=1, redense_epochs=0))]
    if kind == "poison":
        return [PoisonGradient("2.weight", step=1)]  # on the second stage only
    return []


def _build(strategy, precision_name, techniques_kind, seed=0):
    return assemble(_model(seed), strategy, PRECISIONS[precision_name](),
                    lambda m: torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9), _techniques(techniques_kind))


def _run(parts, steps, step_fn):
    inputs, targets = _data()
    losses = []
    for s in steps:
        if s % STEPS == 0:
            for technique in parts.techniques:
                technique.on_epoch_start(s // STEPS, parts.model, parts.optimizer)
        losses.append(step_fn(parts, inputs[s], targets[s]).item())
    return losses


def _pipeline_rank(rank, port, precision_name, techniques_kind, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        config = PipelineConfig(num_stages=2, num_microbatches=2, schedule="1f1b", split_points=["2"])
        strategy = Pipeline(rank, 2, torch.device("cpu"), config)
        parts = _build(strategy, precision_name, techniques_kind)
        losses = _run(parts, range(STEPS), train_step)
        checkpoint = strategy.training_state(parts)
        losses += _run(parts, range(STEPS, 2 * STEPS), train_step)
        final = strategy.training_state(parts)["model"]

        # a fresh pipeline from other weights, restored from the checkpoint, continues identically
        restored = _build(Pipeline(rank, 2, torch.device("cpu"), config), precision_name, techniques_kind, seed=7)
        restored.strategy.load_training_state(restored, checkpoint)
        resumed = _run(restored, range(STEPS, 2 * STEPS), train_step)
        resumed_final = restored.strategy.training_state(restored)["model"]
        if rank == 0:
            scale = parts.precision.scaler.get_scale() if hasattr(parts.precision, "scaler") else None
            torch.save({"losses": losses, "model": final, "resumed": resumed, "resumed_model": resumed_final,
                        "scale": scale, "masks": {k: v for t in parts.techniques for k, v in getattr(t, "masks", {}).items()}},
                       out_dir / "pipeline.pt")
        end_rank()
    finally:  # only reached on an error: end_rank leaves the process
        dist.destroy_process_group()


def _single(precision_name, techniques_kind):
    parts = _build(DataParallel(), precision_name, techniques_kind)
    losses = _run(parts, range(2 * STEPS), train_step)
    return losses, parts


def _spawn(tmp_path, precision_name, techniques_kind):
    mp.start_processes(_pipeline_rank, args=(free_port(), precision_name, techniques_kind, tmp_path), nprocs=2,
                       start_method="fork")
    return torch.load(tmp_path / "pipeline.pt")


def _assert_state_close(a, b, atol):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name].float(), b[name].float(), rtol=0, atol=atol)


def test_dsd_masks_each_stage_like_one_process_and_resumes(tmp_path):
    result = _spawn(tmp_path, "fp32", "dsd")
    single_losses, single = _single("fp32", "dsd")
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(single_losses), rtol=0, atol=1e-5)
    _assert_state_close(result["model"], single.model.state_dict(), 1e-5)
    single_masks = single.techniques[0].masks
    assert result["masks"] and set(result["masks"]) < set(single_masks)  # rank 0 holds the first stage's layers
    for name, mask in result["masks"].items():
        assert torch.equal(mask, single_masks[name])
    for name in single_masks:  # pruned weights stayed at zero on every stage
        assert (result["model"][name][~single_masks[name]] == 0).all()
    assert result["resumed"] == result["losses"][STEPS:]
    _assert_state_close(result["resumed_model"], result["model"], 0)


def test_one_loss_scale_every_stage_skips_when_one_overflows(tmp_path):
    result = _spawn(tmp_path, "fp16", "poison")
    single_losses, single = _single("fp16", "poison")  # one process sees the same inf and skips the same step
    assert result["scale"] == single.precision.scaler.get_scale() == 65536.0 / 2
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(single_losses), rtol=0, atol=2e-3)
    _assert_state_close(result["model"], single.model.state_dict(), 2e-3)
    assert result["resumed"] == result["losses"][STEPS:]
    _assert_state_close(result["resumed_model"], result["model"], 0)


def test_bf16_autocast_runs_per_stage(tmp_path):
    result = _spawn(tmp_path, "bf16", "none")
    single_losses, single = _single("bf16", "none")
    # same casts as one process; only the order of micro-batch gradient sums differs
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(single_losses), rtol=0, atol=2e-2)
    _assert_state_close(result["model"], single.model.state_dict(), 2e-2)
    assert result["resumed"] == result["losses"][STEPS:]
