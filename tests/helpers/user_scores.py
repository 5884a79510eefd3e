"""User losses and metrics by import path (``task.loss``, ``task.metrics``), for the tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smoothed_cross_entropy(logits, targets):
    return F.cross_entropy(logits, targets, label_smoothing=0.1)


def top2_accuracy(logits, targets):
    """A per-row mean: the fraction of rows whose class is among the two largest logits."""
    return (logits.topk(2, dim=-1).indices == targets[:, None]).any(-1).float().mean()


def margin_stats(logits, targets):
    return {"mean_max_logit": logits.max(-1).values.mean().item(), "rows_seen": 1.0}


def per_row_loss(logits, targets):
    return F.cross_entropy(logits, targets, reduction="none")  # not a scalar


def one_argument(logits):
    return logits.mean()


def a_list(logits, targets):
    return [1.0, 2.0]
