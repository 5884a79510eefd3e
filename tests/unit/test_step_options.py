"""The step options of a recipe (``docs/step_options.md``): configs, driver checks and errors,
clipping, per-step schedules, early stopping, accumulation in one process.

Their parity under DDP on 2 gloo processes is in ``test_step_options_gloo.py``.
"""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import pytest
import torch

from rayeffi.errors import UserError
from rayeffi.parallel import DataParallel
from rayeffi.recipe import OptimizerConfig
from rayeffi.recipe.load import validate_recipe
from rayeffi.recipe.step_options import EarlyStopConfig, ScheduleConfig
from rayeffi.driver.preflight import _check_step_options
from rayeffi.precision import PRECISIONS
from rayeffi.worker.build import assemble
from rayeffi.worker.early_stop import EarlyStopping
from rayeffi.worker.optim import build_optimizer, build_scheduler, check_optimizer, lr_factor, step_lr_factor
from rayeffi.worker.step import train_step


def _stage(**stage_keys):
    raw = {"data": {"batch_size": 32}, "scaling": {"num_workers": 2},
           "stages": [{"name": "s", "kind": "train", "epochs": 2, **stage_keys}]}
    return validate_recipe(raw).stages[0]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


# -- recipe layer ---------------------------------------------------------------------------------------


def test_options_parse():
    stage = _stage(optimizer={"name": "torch.optim.RMSprop", "lr": 0.01, "kwargs": {"alpha": 0.9},
                              "max_grad_norm": 1.0, "accumulate_steps": 4,
                              "schedule": {"name": "cosine", "warmup_steps": 3}},
                   early_stop={"patience": 2})
    assert stage.optimizer.schedule.per_step and stage.optimizer.kwargs == {"alpha": 0.9}
    assert stage.early_stop.watched("classification") == "val_accuracy"
    assert not _stage().optimizer.schedule.per_step  # per epoch unless warmup_steps is given


@pytest.mark.parametrize(("stage_keys", "expected"), [
    ({"optimizer": {"name": "rmsprop"}}, "optimizer.name 'rmsprop' is neither a built-in"),
    ({"optimizer": {"name": "torch.optim.RMSprop", "momentum": 0.9}}, "give the optimizer's own in optimizer.kwargs"),
    ({"optimizer": {"accumulate_steps": 0}}, "accumulate_steps must be 1"),
    ({"optimizer": {"accumulate_steps": 3}}, "accumulate_steps 3 does not divide the 16 rows"),
    ({"optimizer": {"max_grad_norm": 0}}, "max_grad_norm"),
    ({"optimizer": {"schedule": {"warmup_steps": 2, "warmup_epochs": 1}}}, "not both"),
    ({"optimizer": {"schedule": {"name": "step", "warmup_steps": 2}}}, "no per-step form"),
    ({"early_stop": {"patience": 1, "metric": "val_perplexity"}}, "not a metric of task 'classification'"),
    ({"early_stop": {"patience": 1, "patiance": 2}}, "unknown key"),
    ({"parallel": {"strategy": "intra_layer", "fc": "split"},
      "optimizer": {"max_grad_norm": 1.0}}, "intra_layer with optimizer.max_grad_norm"),
    ({"parallel": {"strategy": "pipeline", "num_stages": 2, "num_microbatches": 2},
      "optimizer": {"accumulate_steps": 2}}, "raise parallel.num_microbatches"),
    ({"parallel": {"strategy": "param_server", "num_servers": 1}, "early_stop": {"patience": 1}},
     "param_server with early_stop"),
    ({"parallel": {"strategy": "param_server", "num_servers": 1},
      "optimizer": {"schedule": {"warmup_steps": 1}}}, "param_server with optimizer.schedule.warmup_steps"),
    ({"task": "language_modeling", "data": {"dataset": "text"}, "model": {"name": "lm"},
      "optimizer": {"accumulate_steps": 2}}, "language_modeling/token_classification with optimizer.accumulate"),
])
def test_bad_options_are_user_errors_before_ray(stage_keys, expected):
    with pytest.raises(UserError, match=expected):
        _stage(**stage_keys)


def test_driver_checks_the_optimizer_class_and_its_arguments():
    key = "stages.s.optimizer"
    check_optimizer(OptimizerConfig(name="torch.optim.RMSprop", kwargs={"alpha": 0.9}), key)
    check_optimizer(OptimizerConfig(name="torch.optim.adam:Adam", kwargs={"betas": [0.9, 0.95]}), key)
    for name, expected in [("torch.optim.Nope", "stages.s.optimizer.name: 'torch.optim.Nope' does not name"),
                           ("no_such_package.mod:Opt", "does not name an optimizer"),
                           ("collections:OrderedDict", "not a torch.optim.Optimizer subclass")]:
        with pytest.raises(UserError, match=expected):
            check_optimizer(OptimizerConfig(name=name), key)
    with pytest.raises(UserError, match=r"refuses the recipe's arguments .*fix stages.s.optimizer.kwargs") as error:
        check_optimizer(OptimizerConfig(name="torch.optim.RMSprop", kwargs={"bogus": 1}), key)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="refuses"):  # a value the class rejects
        check_optimizer(OptimizerConfig(name="adam", kwargs={"betas": [2.0, 0.9]}), key)


def test_builtins_keep_their_numbers_and_paths_pass_kwargs():
    sgd = build_optimizer(OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4), _model())
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["nesterov"], sgd.defaults["weight_decay"]) == \
        (0.05, 0.9, True, 1e-4)
    adam = build_optimizer(OptimizerConfig(name="adam", lr=0.01), _model())
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 0.0
    rmsprop = build_optimizer(OptimizerConfig(name="torch.optim.RMSprop", lr=0.01, kwargs={"alpha": 0.8}), _model())
    assert type(rmsprop) is torch.optim.RMSprop and rmsprop.defaults["alpha"] == 0.8


def test_warmup_longer_than_the_run_is_refused_before_ray():
    stage = _stage(optimizer={"schedule": {"name": "cosine", "warmup_steps": 6}})  # 2 workers x 16 rows a step
    source = SimpleNamespace(info=SimpleNamespace(num_train=96))  # 48 rows a worker: 3 steps x 2 epochs
    with pytest.raises(UserError, match="warmup_steps 6 is not shorter than the run's 6 optimizer steps"):
        _check_step_options(stage, source)
    _check_step_options(stage, SimpleNamespace(info=SimpleNamespace(num_train=128)))  # 8 steps: fine


# -- schedules ------------------------------------------------------------------------------------------


def test_per_step_warmup_then_cosine_values():
    schedule = ScheduleConfig(name="cosine", warmup_steps=4)
    assert [step_lr_factor(schedule, step, 10) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert step_lr_factor(schedule, 7, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
    linear = ScheduleConfig(name="linear", warmup_steps=0, min_lr_factor=0.1)
    assert [step_lr_factor(linear, step, 4) for step in range(4)] == pytest.approx([1.0, 0.775, 0.55, 0.325])
    assert step_lr_factor(ScheduleConfig(warmup_steps=2), 5, 10) == 1.0  # constant after warm-up


def test_epoch_schedules_keep_their_numbers():
    config = OptimizerConfig(schedule={"name": "cosine", "warmup_epochs": 2, "min_lr_factor": 0.1})
    assert [round(lr_factor(config, epoch, 6), 6) for epoch in range(6)] == [0.1, 0.55, 1.0, 0.868198, 0.55, 0.231802]  # as before per-step schedules


class _Redense:
    """DSD's re-dense LR/10 from epoch 1 on."""

    def lr_factor(self, epoch):
        return 0.1 if epoch >= 1 else 1.0


def test_per_step_scheduler_multiplies_technique_factors_and_resumes(tmp_path):
    config = OptimizerConfig(lr=1.0, schedule={"name": "linear", "warmup_steps": 2})
    optimizer = build_optimizer(config, _model())
    scheduler = build_scheduler(config, optimizer, num_epochs=2, techniques=[_Redense()], steps_per_epoch=3)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.075, 0.05, 0.025])  # epoch 1 (steps 3..5) x 0.1
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    fresh_optimizer = build_optimizer(config, _model())
    resumed = build_scheduler(config, fresh_optimizer, num_epochs=2, techniques=[_Redense()], steps_per_epoch=3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert resumed.last_epoch == 6


# -- clipping and accumulation in one process -----------------------------------------------------------


def _parts(policy="fp32", max_grad_norm=None, accumulate_steps=1, lr=0.1, **scaler_options):
    parts = assemble(_model(), DataParallel(0, 1), PRECISIONS[policy](**scaler_options),
                     lambda model: torch.optim.SGD(model.parameters(), lr=lr))
    parts.max_grad_norm, parts.accumulate_steps = max_grad_norm, accumulate_steps
    return parts


def _batch(rows=8, seed=1):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(rows, 6, generator=generator) * 5
    return inputs, inputs[:, :3].argmax(-1)


def test_clipping_matches_clip_grad_norm_and_records_the_norm():
    parts = _parts(max_grad_norm=0.05)
    reference = _model()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    inputs, targets = _batch()
    train_step(parts, inputs, targets)
    torch.nn.functional.cross_entropy(reference(inputs), targets).backward()
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)
    optimizer.step()
    assert norm > 0.05  # it clipped
    torch.testing.assert_close(parts.grad_norms[0], norm)
    for mine, theirs in zip(parts.model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("policy", ["fp16", "fp16-master"])
def test_an_overflowing_fp16_step_is_skipped_not_clipped(policy):
    parts = _parts(policy, max_grad_norm=1.0)
    before = [p.detach().clone() for p in parts.optimizer.param_groups[0]["params"]]
    inputs, targets = _batch()
    inputs[0, 0] = float("inf")
    train_step(parts, inputs, targets)
    assert torch.isnan(parts.grad_norms[0])  # left out of the epoch's mean
    assert parts.precision.telemetry.state_dict()  # the policy ran its skip path
    for old, new in zip(before, parts.optimizer.param_groups[0]["params"]):
        assert torch.equal(old, new)  # skipped: clipping did not turn inf into finite gradients
    clean_inputs, _ = _batch(seed=2)
    train_step(parts, clean_inputs, targets)  # the next step unscales afresh and steps
    assert torch.isfinite(parts.grad_norms[1])
    assert any(not torch.equal(old, new) for old, new in zip(before, parts.optimizer.param_groups[0]["params"]))


def test_fp16_clipping_sees_the_unscaled_norm():
    fp32, fp16 = _parts(max_grad_norm=1e9), _parts("fp16", max_grad_norm=1e9, init_scale=256.0)
    inputs, targets = _batch()
    train_step(fp32, inputs, targets)
    train_step(fp16, inputs, targets)
    torch.testing.assert_close(fp16.grad_norms[0], fp32.grad_norms[0], rtol=1e-2, atol=0)  # not x 65536


def test_accumulation_in_one_process_equals_the_whole_batch_even_uneven():
    whole, accumulated = _parts(), _parts(accumulate_steps=3)  # 10 rows: micro-batches of 4, 3, 3
    inputs, targets = _batch(rows=10)
    whole_loss = train_step(whole, inputs, targets)
    accumulated_loss = train_step(accumulated, inputs, targets)
    torch.testing.assert_close(accumulated_loss, whole_loss, rtol=0, atol=1e-6)
    for mine, theirs in zip(accumulated.model.parameters(), whole.model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)


# -- early stopping -------------------------------------------------------------------------------------


def test_early_stopping_counts_epochs_without_improvement_and_resumes():
    stopper = EarlyStopping.from_config(EarlyStopConfig(patience=2, min_delta=0.01), "classification")
    decisions = [stopper.update({"val_accuracy": value}) for value in (0.5, 0.6, 0.605, 0.9)]
    assert decisions == [False, False, False, False]  # 0.605 is within min_delta; 0.9 resets
    metrics = {"val_accuracy": 0.85}
    assert not stopper.update(metrics)
    assert metrics["early_stop_best"] == 0.9 and metrics["early_stop_bad_epochs"] == 1
    resumed = EarlyStopping.from_config(EarlyStopConfig(patience=2, min_delta=0.01), "classification")
    resumed.restore(metrics)  # the checkpoint's metrics carry the counters
    assert resumed.update({"val_accuracy": float("nan")})  # a NaN never improves: the second bad epoch stops
    loss = EarlyStopping.from_config(EarlyStopConfig(patience=1, metric="val_loss"), "classification")
    assert [loss.update({"val_loss": value}) for value in (1.0, 0.5, 0.7)] == [False, False, True]


def test_smoke_keeps_a_per_step_warmup_shorter_than_the_run(write_recipe):
    from rayeffi.recipe import load_recipe

    text = """
optimizer: {schedule: {name: cosine, warmup_steps: 500}}
stages: [{name: train, kind: train, epochs: 9}]
"""
    stage = load_recipe(write_recipe(text), smoke=True).stage("train")
    assert stage.optimizer.schedule.warmup_steps < stage.total_epochs  # >= 1 step per epoch


# -- user loss and metrics ------------------------------------------------------------------------------


def test_user_scores_parse_and_are_refused_where_they_cannot_run():
    stage = _stage(task={"loss": "helpers.user_scores:smoothed_cross_entropy",
                         "metrics": ["helpers.user_scores:top2_accuracy"]})
    assert stage.task.metrics == ("helpers.user_scores:top2_accuracy",)
    with pytest.raises(UserError, match="'helpers.user_scores' is not a 'package.module:function' path"):
        _stage(task={"loss": "helpers.user_scores"})
    with pytest.raises(UserError, match="task.loss replaces the loss of a row task"):
        _stage(task={"name": "language_modeling", "loss": "helpers.user_scores:smoothed_cross_entropy"},
               data={"dataset": "text"}, model={"name": "lm"})
    with pytest.raises(UserError, match="pipeline with task.metrics"):
        _stage(task={"metrics": ["helpers.user_scores:top2_accuracy"]},
               parallel={"strategy": "pipeline", "num_stages": 2, "num_microbatches": 2})


def _user_task(**keys):
    from rayeffi.recipe.sections import TaskConfig
    from rayeffi.task import build_task

    return build_task(TaskConfig(**keys))


def test_a_user_loss_trains_and_scores_val_loss():
    task = _user_task(loss="helpers.user_scores:smoothed_cross_entropy")
    parts = _parts()
    parts.task = task
    reference = _model()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    inputs, targets = _batch()
    train_step(parts, inputs, targets)
    torch.nn.functional.cross_entropy(reference(inputs), targets, label_smoothing=0.1).backward()
    optimizer.step()
    for mine, theirs in zip(parts.model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    logits = reference(inputs).detach()
    expected = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.1).item() * len(targets)
    assert task.eval_sums(logits, targets)[0].item() == pytest.approx(expected, rel=1e-6)


def test_user_metrics_are_row_weighted_means_over_uneven_batches():
    task = _user_task(metrics=["helpers.user_scores:top2_accuracy", "helpers.user_scores:margin_stats"])
    generator = torch.Generator().manual_seed(3)
    logits, targets = torch.randn(10, 5, generator=generator), torch.randint(0, 5, (10,), generator=generator)
    sums = task.eval_sums(logits[:7], targets[:7]) + 0  # a batch of 7, then one of 3
    sums = sums + task.eval_sums(logits[7:], targets[7:])
    assert task.metric_names == ("val_top2_accuracy", "val_mean_max_logit", "val_rows_seen")
    assert task.num_eval_sums == len(sums) == 3 + 1 + 3
    metrics = task.extra_metrics(sums[3:].tolist())
    whole = (logits.topk(2, dim=-1).indices == targets[:, None]).any(-1).float().mean().item()
    assert metrics["val_top2_accuracy"] == pytest.approx(whole)  # the mean over all 10 rows
    assert metrics["val_mean_max_logit"] == pytest.approx(logits.max(-1).values.mean().item())
    assert metrics["val_rows_seen"] == pytest.approx(1.0)


@pytest.mark.parametrize(("keys", "expected"), [
    ({"loss": "helpers.user_scores:per_row_loss"}, r"task.loss helpers.user_scores:per_row_loss returned \[8\]: "
                                                   "it must return a scalar tensor"),
    ({"loss": "helpers.user_scores:one_argument"}, r"task.loss .*one_argument\(logits, targets\) failed on 2 rows"),
    ({"metrics": ["helpers.user_scores:a_list"]}, "task.metrics .*a_list.* must return a number or a dict"),
    ({"loss": "helpers.user_scores:nothing_here"}, "has no function 'nothing_here'"),
    ({"loss": "helpers.no_such_module:f"}, "cannot import 'helpers.no_such_module'"),
])
def test_user_scores_are_checked_in_the_dry_run(keys, expected):
    from rayeffi.models.contract import dry_run

    with pytest.raises(UserError, match=expected) as error:
        dry_run(_model(), "mlp", *_batch(), 3, task=_user_task(**keys))
    assert "\n" not in str(error.value)
