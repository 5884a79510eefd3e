"""The one epoch loop (worker/epoch.py), without Ray: the hooks the parameter server plugs in
run in order around each step, skipped batches are not trained, a non-finite loss stops it
with the one-line error, and the epoch's metrics carry the at-chance warning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rayeffi.health import TrainingDiverged
from rayeffi.parallel.base import Strategy
from rayeffi.recipe import validate_recipe
from rayeffi.worker.epoch import EpochHooks, finish_metrics, train_epoch
from rayeffi.worker.step import StepParts

ROWS, FEATURES, CLASSES = 4, 3, 2


class _Batches:
    """``ShardBatches``' interface over fixed batches."""

    def __init__(self, batches):
        self.batches, self.steps = batches, len(batches)

    def epoch(self, shuffle_seed):
        return ({name: column.clone() for name, column in batch.items()} for batch in self.batches)


class _Recording(EpochHooks):
    def __init__(self, batches_done: int = 0):
        self.batches_done, self.calls = batches_done, []

    def before_step(self, step):
        self.calls.append(("before", step))

    def after_step(self, step, last):
        self.calls.append(("after", step, last))


def _batch(fill: float | None = None):
    features = torch.randn(ROWS, FEATURES) if fill is None else torch.full((ROWS, FEATURES), fill)
    return {"features": features, "label": torch.randint(0, CLASSES, (ROWS,))}


def _setup():
    torch.manual_seed(0)
    stage = validate_recipe({"seed": 0, "stages": [{"name": "train", "kind": "train", "epochs": 1}]}).stages[0]
    model = nn.Linear(FEATURES, CLASSES)
    parts = StepParts(model, torch.optim.SGD(model.parameters(), lr=0.1), Strategy(device=torch.device("cpu")))
    return stage, parts


def test_hooks_run_around_each_step_and_skipped_batches_are_not_trained():
    stage, parts = _setup()
    hooks = _Recording(batches_done=1)
    sums, seconds = train_epoch(parts, _Batches([_batch(), _batch(), _batch()]), stage, 0, hooks=hooks)
    assert hooks.calls == [("before", 1), ("after", 1, False), ("before", 2), ("after", 2, True)]
    assert sums[1].item() == 2 * ROWS and sums[2].item() == 2 * ROWS  # the skipped batch's rows left out
    assert seconds > 0


def test_a_non_finite_loss_raises_the_one_line_error_before_the_step_is_pushed():
    stage, parts = _setup()
    hooks = _Recording()
    with pytest.raises(TrainingDiverged) as raised:
        train_epoch(parts, _Batches([_batch(), _batch(float("nan")), _batch()]), stage, 2, hooks=hooks)
    message = str(raised.value)
    assert message.startswith("stages.train: the training loss became non-finite at epoch 3, step 2 (lr 0.1, "
                              "precision fp32): lower optimizer.lr")
    assert "\n" not in message
    assert hooks.calls == [("before", 0), ("after", 0, False), ("before", 1)]  # no push of a NaN gradient


def test_finish_metrics_warns_at_chance():
    _, parts = _setup()
    at_chance = [10.0, 8.0, 8.0, 8.0, 4.0, 8.0]  # val_loss 1.0 >= ln 2, val_accuracy 0.5
    metrics = finish_metrics(parts, at_chance, train_s=1.0, epoch=2, lr=0.1, num_classes=CLASSES)
    assert metrics["epoch"] == 3 and metrics["train_loss"] == 1.25 and metrics["val_accuracy"] == 0.5
    assert "at chance" in metrics["warning"]
    assert "warning" not in finish_metrics(parts, at_chance, train_s=1.0, epoch=0, lr=0.1, num_classes=CLASSES)
