"""Knowledge distillation as pure functions (Bucila et al. 2006; Hinton et al. 2015; Romero et al. 2015).

Usable in any training loop; :mod:`rayeffi.techniques.distill` plugs them into rayeffi's step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def teacher_log_probs(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log of the teachers' averaged softened distribution.

    ``teacher_logits`` is ``[N, C]`` for one teacher or ``[K, N, C]`` for an ensemble of
    ``K``. An ensemble's soft target is the mean of its members' probabilities
    (Hinton et al. 2015, section 1; Bucila et al. 2006 compress ensembles the same way):

        p_t = 1/K * sum_k softmax(t_k / T)
        log p_t = logsumexp_k(log_softmax(t_k / T)) - log K

    computed in log space, in FP32, so small probabilities do not underflow.
    """
    log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if log_probs.dim() == 2:
        return log_probs
    return torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(p_t || softmax(s / T))``, averaged over the batch.

    The ``T^2`` factor keeps the soft term's gradient magnitude independent of ``T``: the
    gradient of the KL term with respect to a student logit is ``(q_i - p_i) / T``, and
    for large ``T`` that is about ``(s_i - t_i) / (N T^2)`` (Hinton et al. 2015, section
    2.1), so multiplying by ``T^2`` restores the scale as ``T`` changes.
    """
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = teacher_log_probs(teacher_logits, temperature)
    # batchmean is the true KL per example; "mean" would also divide by the classes
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


def real_positions(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                   ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token distillation: ``[N, T, V]`` logits -> ``[M, V]`` at the ``M`` scored positions
    (padding masked), so :func:`soft_target_loss` averages the KL over real tokens. A teacher
    ensemble's ``[K, N, T, V]`` becomes ``[K, M, V]``."""
    keep = targets != ignore_index
    return student_logits[keep], teacher_logits[..., keep, :]


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al., "Distilling the Knowledge in a Neural Network", 2015:

        loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

    ``s``: student logits ``[N, C]``; ``t``: teacher logits ``[N, C]`` or an ensemble's
    ``[K, N, C]`` (soft targets averaged, see :func:`teacher_log_probs`); ``y``: labels.
    ``alpha = 0`` is plain cross-entropy; ``alpha = 1`` learns from the teacher alone.
    """
    hard = F.cross_entropy(student_logits.float(), targets)
    if alpha == 0.0:
        return hard
    return alpha * soft_target_loss(student_logits, teacher_logits, temperature) + (1.0 - alpha) * hard


def hint_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor, adapter: nn.Module | None = None):
    """FitNets hint loss (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015):

        L_hint = mean((r(v_s) - u_t)^2)

    ``v_s`` is the student's guided layer output, ``u_t`` the teacher's hint layer
    output, ``r`` a learned regressor (``adapter``) mapping the student's shape onto the
    teacher's: a linear layer for ``[N, F]`` features, a 1x1 convolution for ``[N, C, H, W]``.
    (The paper's 1/2 factor is left to the hint weight.)
    """
    if adapter is not None:
        student_feature = adapter(student_feature)
    return F.mse_loss(student_feature.float(), teacher_feature.detach().float())


def build_adapter(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module | None:
    """The regressor from a student feature shape to a teacher's (``None`` if they match).

    Shapes exclude the batch dimension. Feature vectors get ``nn.Linear``; feature maps
    with the same height and width get a 1x1 ``nn.Conv2d``; anything else is an error.
    """
    if tuple(student_shape) == tuple(teacher_shape):
        return None
    if len(student_shape) == 1 and len(teacher_shape) == 1:
        return nn.Linear(student_shape[0], teacher_shape[0])
    if len(student_shape) == 3 and len(teacher_shape) == 3 and student_shape[1:] == teacher_shape[1:]:
        return nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1)
    raise ValueError(
        f"a hint cannot map student features {list(student_shape)} onto teacher features {list(teacher_shape)}: "
        "pair [F] with [F'] (linear adapter) or [C, H, W] with [C', H, W] (1x1 conv adapter)"
    )


class FeatureCapture:
    """Forward hooks that keep the outputs of named submodules (torchdistill's idea).

    ``capture = FeatureCapture(model, ["features.2"])``; after a forward pass,
    ``capture.outputs["features.2"]`` holds that module's output. ``remove()`` detaches
    the hooks.
    """

    def __init__(self, model: nn.Module, module_paths: list[str]):
        modules = dict(model.named_modules())
        missing = [path for path in module_paths if path not in modules]
        if missing:
            raise KeyError(missing[0])
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[path].register_forward_hook(self._hook(path)) for path in module_paths]

    def _hook(self, path: str):
        def keep(module, inputs, output):
            self.outputs[path] = output

        return keep

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
