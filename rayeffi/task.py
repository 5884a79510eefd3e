"""What the model predicts and how it is scored: the task slot.

A recipe's ``task`` names one of four tasks; each decides the loss, what counts as one
scored target, the validation metrics and the dtype of the labels:

==========================  =====================  ==========================  ===================================
task                        logits                 targets                     metrics
==========================  =====================  ==========================  ===================================
``classification``          ``[N, C]``             ``[N]`` int64 classes       ``val_accuracy``
``language_modeling``       ``[N, T, V]``          ``[N, T]`` next token ids   ``val_perplexity``, ``val_token_accuracy``
``token_classification``    ``[N, T, C]``          ``[N, T]`` a class a token  ``val_token_accuracy``
``regression``              ``[N, K]`` (or ``[N]``)  ``[N, K]`` float32          ``val_rmse``
==========================  =====================  ==========================  ===================================

Targets equal to ``ignore_index`` (padding, the last position of a sequence) score
nothing. The model contract: ``forward`` receives one tensor (float32 features, or
int64 token ids) and returns the logits, or an object or mapping carrying them as
``logits`` (a Hugging Face ``ModelOutput``), or a tuple whose first item is the logits;
:func:`logits_of` is the one place such outputs are unwrapped.

**The loss is a mean over every scored target of the global batch.** With a fixed
number of targets per row (classification, regression) each worker's own mean is
already that once gradients are averaged. Per-token tasks have a different number of
real tokens on each worker, so the step divides each worker's summed loss by the mean
count per data-parallel replica (``Strategy.mean_count``, one all-reduce of a scalar):
the averaged gradient is then exactly that of the global per-token mean, padding or not.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from rayeffi.errors import UserError

IGNORE_INDEX = -100
"""The default label of a position that scores nothing (PyTorch's and Hugging Face's)."""


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits tensor inside whatever the model's ``forward`` returned (see the module docstring)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and "logits" in outputs:  # ModelOutput is an OrderedDict too
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise TypeError(
        f"the model returned {type(outputs).__name__}: forward must return the logits tensor, "
        "or an object or dict with a 'logits' tensor"
    )


class Task:
    """One class per row, cross-entropy, accuracy (the default task)."""

    name = "classification"
    label_dtype = torch.int64
    per_token = False
    """Targets per row vary (padding): the loss needs the global count (module docstring)."""
    headline = ("val_accuracy",)
    """Validation metrics a progress line shows after ``val_loss``."""

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        self.ignore_index = ignore_index

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, mean_count: torch.Tensor | None = None):
        """The step's loss: a mean over scored targets in FP32, whatever dtype the forward ran in.

        ``mean_count``: divide the summed loss by this (per-token tasks, see the module docstring).
        """
        return F.cross_entropy(logits_of(outputs).float(), targets)

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits_of(outputs).float(), targets, reduction="sum")

    def count(self, targets: torch.Tensor) -> torch.Tensor | int:
        """Scored targets in a batch (a tensor on the targets' device for per-token tasks)."""
        return len(targets)

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (logits_of(outputs).argmax(dim=-1) == targets).sum()

    def metrics(self, val_loss: float, correct: float, count: float) -> dict[str, float]:
        return {"val_accuracy": correct / max(count, 1)}

    def eval_sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``[loss_sum, num_correct, num_scored]`` of one batch, FP64 on the targets' device
        (a task with user metrics appends its own sums: :class:`UserScores`)."""
        count = torch.as_tensor(self.count(targets), dtype=torch.float64, device=targets.device)
        return torch.stack([self.loss_sum(outputs, targets).double(), self.correct(outputs, targets).double(), count])

    num_eval_sums = 3
    """Entries of :meth:`eval_sums`."""

    def extra_metrics(self, extra_sums: list[float]) -> dict[str, float]:
        """Validation metrics from the all-reduced entries of :meth:`eval_sums` after the first three."""
        return {}

    def output_shape(self, inputs: torch.Tensor, num_outputs: int) -> tuple[int, ...]:
        """The logits' shape the model must return for ``inputs`` (``check_model``)."""
        return (inputs.shape[0], num_outputs)


class TokenTask(Task):
    """A class per position: tagging (``token_classification``), ``ignore_index`` masked."""

    name = "token_classification"
    per_token = True
    headline = ("val_token_accuracy",)

    def loss(self, outputs, targets, mean_count=None):
        logits = logits_of(outputs).float()
        flat = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        if mean_count is None:
            return F.cross_entropy(*flat, ignore_index=self.ignore_index)
        return F.cross_entropy(*flat, ignore_index=self.ignore_index, reduction="sum") / mean_count

    def loss_sum(self, outputs, targets):
        logits = logits_of(outputs).float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=self.ignore_index, reduction="sum")

    def count(self, targets):
        return (targets != self.ignore_index).sum()

    def correct(self, outputs, targets):
        return ((logits_of(outputs).argmax(dim=-1) == targets) & (targets != self.ignore_index)).sum()

    def metrics(self, val_loss, correct, count):
        return {"val_token_accuracy": correct / max(count, 1)}

    def output_shape(self, inputs, num_outputs):
        return (inputs.shape[0], inputs.shape[1], num_outputs)


class LanguageModeling(TokenTask):
    """Next-token prediction: the labels are the inputs shifted by one (``data/tokens.py``)."""

    name = "language_modeling"
    headline = ("val_perplexity", "val_token_accuracy")

    def metrics(self, val_loss, correct, count):
        perplexity = math.exp(val_loss) if val_loss < 700 else math.inf
        return {"val_perplexity": perplexity, "val_token_accuracy": correct / max(count, 1)}


class Regression(Task):
    """A float target (or a vector of them) per row; mean squared error."""

    name = "regression"
    label_dtype = torch.float32
    headline = ("val_rmse",)

    def loss(self, outputs, targets, mean_count=None):
        return F.mse_loss(self._shaped(outputs, targets), targets.float())

    def loss_sum(self, outputs, targets):
        return F.mse_loss(self._shaped(outputs, targets), targets.float(), reduction="sum")

    def count(self, targets):
        return targets.numel()

    def correct(self, outputs, targets):
        return torch.zeros((), device=targets.device)

    def metrics(self, val_loss, correct, count):
        return {"val_rmse": math.sqrt(max(val_loss, 0.0))}

    @staticmethod
    def _shaped(outputs, targets):
        return logits_of(outputs).float().reshape(targets.shape)


class UserScores:
    """A task scored by the user's functions (``task.loss``, ``task.metrics`` in a recipe);
    mixed in before a task class (:data:`USER_SCORED_TASKS`).

    ``user_loss(logits, targets) -> scalar tensor`` gets the FP32 logits and replaces the
    task's loss in training and in ``val_loss`` (a batch's ``loss_sum`` is its value x the
    batch's scored targets). Each ``user_metrics`` function ``(logits, targets)`` returns a
    number or a dict of numbers per batch, read as a mean over the batch's rows: the
    reported ``val_NAME`` (a number: the function's name; a dict: each key) is the mean over
    every validation row of every worker, each batch weighted by its rows (exact for
    per-row means such as an accuracy). The names are fixed by the first batch.
    """

    user_loss: Callable | None = None
    user_metrics: tuple[Callable, ...] = ()
    metric_names: tuple[str, ...] | None = None

    def loss(self, outputs, targets, mean_count=None):
        if self.user_loss is None:
            return super().loss(outputs, targets, mean_count)
        return self.user_loss(logits_of(outputs).float(), targets)

    def loss_sum(self, outputs, targets):
        if self.user_loss is None:
            return super().loss_sum(outputs, targets)
        return self.loss(outputs, targets).float() * self.count(targets)

    @property
    def num_eval_sums(self) -> int:
        return 3 + (1 + len(self.metric_names or ()) if self.user_metrics else 0)

    def eval_sums(self, outputs, targets):
        sums = super().eval_sums(outputs, targets)
        if not self.user_metrics:
            return sums
        values = self.metric_values(logits_of(outputs).float(), targets)
        rows = float(len(targets))
        weighted = torch.tensor([rows, *(rows * value for value in values.values())], dtype=torch.float64)
        return torch.cat([sums, weighted.to(sums.device)])

    def metric_values(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Every user metric of one batch, by reported name (``val_...``)."""
        values: dict[str, float] = {}
        with torch.no_grad():
            for function in self.user_metrics:
                result = function(logits, targets)
                items = result.items() if isinstance(result, dict) else [(function.__name__, result)]
                values.update({f"val_{name}": float(value) for name, value in items})
        if self.metric_names is None:
            self.metric_names = tuple(values)
        return values

    def extra_metrics(self, extra_sums):
        if not self.user_metrics or not extra_sums:
            return {}
        rows, *sums = extra_sums
        return {name: value / max(rows, 1.0) for name, value in zip(self.metric_names or (), sums)}


class UserScoredClassification(UserScores, Task):
    pass


class UserScoredRegression(UserScores, Regression):
    pass


class UserScoredTokenClassification(UserScores, TokenTask):
    pass


class UserScoredLanguageModeling(UserScores, LanguageModeling):
    pass


TASKS: dict[str, type[Task]] = {
    task.name: task for task in (Task, LanguageModeling, TokenTask, Regression)
}
TASK_NAMES = tuple(TASKS)
CLASSIFICATION = Task()
USER_SCORED_TASKS: dict[str, type[Task]] = {
    task.name: task for task in (UserScoredClassification, UserScoredRegression, UserScoredTokenClassification,
                                 UserScoredLanguageModeling)
}
"""Task name -> the task with user scores mixed in (module-level classes: they pickle)."""


def build_task(config: Any = None) -> Task:
    """The task a recipe's ``task`` section names (None: classification), with the user's
    loss and metrics (``task.loss``, ``task.metrics``) where it gives them."""
    if config is None:
        return CLASSIFICATION
    if not (getattr(config, "loss", None) or getattr(config, "metrics", ())):
        return TASKS[config.name](config.ignore_index)
    task = USER_SCORED_TASKS[config.name](config.ignore_index)
    task.user_loss = resolve_function(config.loss, "task.loss") if config.loss else None
    task.user_metrics = tuple(resolve_function(path, "task.metrics") for path in config.metrics)
    return task


def resolve_function(path: str, key: str) -> Callable:
    """``package.module:function`` -> the function; ``UserError`` naming ``key`` otherwise."""
    module_name, _, function_name = path.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name, None)
    except Exception as exc:  # ImportError, or the module's own code raising as it runs
        raise UserError(f"{key} {path}: cannot import {module_name!r} ({type(exc).__name__}: {exc}): "
                        "put it beside the recipe, in the current folder or on PYTHONPATH") from None
    if not callable(function):
        raise UserError(f"{key} {path}: {module_name} has no function {function_name!r}")
    return function


def check_user_scores(task: Task, logits: torch.Tensor, targets: torch.Tensor) -> None:
    """The driver's dry run (``models/contract.py``): the user's loss returns a finite scalar
    tensor and each metric a number or a dict of numbers, on real rows; ``UserError`` otherwise."""
    if not isinstance(task, UserScores):
        return
    if task.user_loss is not None:
        try:
            loss = task.user_loss(logits.float(), targets)
        except Exception as exc:  # the user's function: one line, not a traceback
            raise UserError(f"task.loss {_name(task.user_loss)}(logits, targets) failed on 2 rows of the data "
                            f"({type(exc).__name__}: {exc}): it takes the logits and the targets") from None
        if not (isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.requires_grad):
            shape = list(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise UserError(f"task.loss {_name(task.user_loss)} returned {shape}: it must return a scalar tensor "
                            "computed from the logits (e.g. a .mean() over the rows)")
    for function in task.user_metrics:
        try:
            result = function(logits.detach().float(), targets)
            for value in result.values() if isinstance(result, dict) else [result]:
                float(value)  # a number, or a one-element tensor
        except Exception as exc:
            raise UserError(f"task.metrics {_name(function)}(logits, targets) failed on 2 rows of the data "
                            f"({type(exc).__name__}: {exc}): it must return a number or a dict of numbers") from None


def _name(function: Callable) -> str:
    return f"{function.__module__}:{function.__name__}"


HEADLINE_KEYS = ("val_accuracy", "val_perplexity", "val_token_accuracy", "val_rmse")
"""Every task's validation figures (``Task.headline``), in the order lines of output show them."""


def headline_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The validation figures a line of output shows, whichever task reported them."""
    return {key: metrics[key] for key in HEADLINE_KEYS if isinstance(metrics.get(key), (int, float))}


# the classification task's functions, for callers that score one class per row
def task_loss(outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    if reduction == "sum":
        return CLASSIFICATION.loss_sum(outputs, targets)
    return CLASSIFICATION.loss(outputs, targets)


def correct_count(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return CLASSIFICATION.correct(outputs, targets)
