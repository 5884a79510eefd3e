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

import math
from typing import Any

import torch
import torch.nn.functional as F

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
        """``[loss_sum, num_correct, num_scored]`` of one batch, FP64 on the targets' device."""
        count = torch.as_tensor(self.count(targets), dtype=torch.float64, device=targets.device)
        return torch.stack([self.loss_sum(outputs, targets).double(), self.correct(outputs, targets).double(), count])

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


TASKS: dict[str, type[Task]] = {
    task.name: task for task in (Task, LanguageModeling, TokenTask, Regression)
}
TASK_NAMES = tuple(TASKS)
CLASSIFICATION = Task()


def build_task(config: Any = None) -> Task:
    """The task a recipe's ``task`` section names (None: classification)."""
    if config is None:
        return CLASSIFICATION
    return TASKS[config.name](config.ignore_index)


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
