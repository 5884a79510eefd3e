"""Loss scaling for FP16 training: the maths as pure functions (Micikevicius et al. 2018).

FP16 has a 5-bit exponent: normal numbers reach down to 2^-14 (6.1e-5), subnormals to
2^-24 (6.0e-8), and anything below half of that, ``|g| < 2^-25``, rounds to zero.
Small gradients, common late in training and in the early layers, vanish there. Loss
scaling multiplies the loss by ``S`` before backward, so by the chain rule every
gradient is ``S`` times larger and climbs back into FP16's range; the gradients are
divided by ``S`` in FP32 before the optimizer uses them:

    g_fp32 = fp32(grad(S * L)) / S

If ``S`` is too large a gradient overflows (inf, or NaN from ``inf - inf``). Dynamic
scaling (Section 3.2 of the paper; PyTorch's ``GradScaler``) then skips that step and
multiplies ``S`` by ``backoff_factor`` (0.5), and multiplies it by ``growth_factor``
(2) after ``growth_interval`` clean steps in a row. Static scaling keeps ``S`` fixed
(the step is still skipped on inf/NaN, so a weight never becomes NaN).
"""

from __future__ import annotations

from typing import Iterable

import torch

FP16_SMALLEST_SUBNORMAL = 2.0**-24
"""The smallest positive FP16 number; below half of it a value rounds to zero."""

DEFAULT_INIT_SCALE = 2.0**16


def underflow_fraction(grads: Iterable[torch.Tensor]) -> float:
    """Fraction of the nonzero gradient elements that would round to zero in FP16.

    ``grads`` are true (unscaled) gradients in FP32 or BF16. Elements that are
    exactly zero already (a dead ReLU, an unused class) are not counted either way, so
    the fraction says how much of the signal FP16 without loss scaling would lose at
    the weight gradients. Non-finite elements count as not lost.
    """
    lost = torch.zeros((), dtype=torch.float64)
    nonzero = torch.zeros((), dtype=torch.float64)
    for grad in grads:
        grad = grad.detach()
        is_nonzero = grad != 0
        lost += (is_nonzero & (grad.to(torch.float16) == 0)).sum().cpu()
        nonzero += is_nonzero.sum().cpu()
    return float(lost / nonzero) if nonzero > 0 else 0.0


def has_non_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True if any element is inf or NaN (one host sync, whatever the number of tensors)."""
    flags = [torch.logical_not(torch.isfinite(t)).any() for t in tensors]
    return bool(torch.stack(flags).any()) if flags else False


def grad_scaler(
    device_type: str,
    loss_scale: str | float = "dynamic",
    init_scale: float = DEFAULT_INIT_SCALE,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
    growth_interval: int = 2000,
) -> torch.amp.GradScaler:
    """A ``torch.amp.GradScaler`` for dynamic scaling, or one started at the static scale.

    For a static ``loss_scale`` the caller keeps the scale fixed with
    ``scaler.update(new_scale=loss_scale)`` after every step (GradScaler itself only
    knows dynamic scaling: it rejects ``growth_factor == backoff_factor == 1``).
    """
    if loss_scale != "dynamic":
        return torch.amp.GradScaler(device_type, init_scale=float(loss_scale))
    return torch.amp.GradScaler(
        device_type,
        init_scale=init_scale,
        growth_factor=growth_factor,
        backoff_factor=backoff_factor,
        growth_interval=growth_interval,
    )


def optimizer_grads(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The gradients the optimizer is about to apply (parameters without one are skipped)."""
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
