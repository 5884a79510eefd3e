"""The precision policy slot of the step: which dtype math runs in, and loss scaling.

Exactly one policy runs per stage (Micikevicius et al., "Mixed Precision Training",
ICLR 2018). What each policy holds in which dtype at each point of the step:

=================  ========  ==============  ==============  ===================
point of the step  fp32      bf16            fp16            fp16-master
=================  ========  ==============  ==============  ===================
weights (model)    FP32      FP32            FP32            FP16 (norms FP32)
forward matmuls    FP32      BF16 autocast   FP16 autocast   FP16 autocast
loss, softmax      FP32      FP32            FP32            FP32
loss scale S       none      none            FP32 multiply   FP32 multiply
weight gradients   FP32      FP32            FP32 (x S)      FP16 (x S)
DDP all-reduce     FP32      FP32            FP32            FP16
unscale, inf check -         -               FP32            FP32 master grads
optimizer update   FP32      FP32            FP32            FP32 masters
after the update   -         -               -               masters -> FP16
=================  ========  ==============  ==============  ===================

Layers autocast leaves in FP32 (:func:`fp32_layers`): a GRU always; an LSTM on CPUs,
where oneDNN has no FP16/BF16 LSTM: the policies run it with autocast off on FP32 inputs
(``precision/recurrent.py``), so oneDNN's FP32 kernel computes it. The driver prints
them before a bf16/fp16 stage starts.

Autocast keeps its own FP32 list (softmax, norms, reductions) on GPUs; the task loss
is always computed on ``outputs.float()`` (``worker/step.py``). Under autocast the
activations of matmuls and convolutions are BF16/FP16, and so are the gradients
flowing back through them; weight gradients take the weight's dtype.

The maths lives in :mod:`rayeffi.precision.loss_scaling` and
:mod:`rayeffi.precision.master_weights`; the classes here only plug it into the step.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from rayeffi.precision.loss_scaling import (
    DEFAULT_INIT_SCALE,
    grad_scaler,
    has_non_finite,
    optimizer_grads,
    underflow_fraction,
)
from rayeffi.precision.master_weights import (
    cast_to_fp16_,
    grads_to_masters_,
    masters_to_model_,
    point_optimizer_at_masters_,
)
from rayeffi.precision.recurrent import run_lstms_in_fp32, runs_in_fp32
from rayeffi.precision.telemetry import PrecisionTelemetry


class Precision:
    """Full FP32: forward, backward and the optimizer step all in float32."""

    name = "fp32"
    skips_on_overflow = False
    """True for the loss-scaled policies: a step with inf/NaN gradients is skipped."""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Called once before the strategy wraps the model (e.g. cast weights to FP16:
        DDP fixes its gradient buckets' dtype when it wraps)."""
        return model

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called once after the optimizer exists (e.g. to point it at FP32 master weights)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for the forward pass and the loss."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward pass (a loss-scaling policy multiplies ``loss`` first)."""
        loss.backward()

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss backward starts from (a pipeline's schedule runs backward itself)."""
        return loss

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Make the optimizer's gradients the true gradients before :meth:`step` (a loss-scaling
        policy divides them by the scale; once per step however often it is called). Gradient
        clipping calls it (``worker/step.py: clip_gradients``)."""

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Apply the gradients; return False where the step was skipped (overflow)."""
        optimizer.step()
        return True

    def metrics(self) -> dict[str, Any]:
        """Telemetry added to every epoch's metrics (loss scale, skipped steps, ...)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


FP32 = Precision


def _device_type(model: nn.Module) -> str:
    """``cpu`` or ``cuda``: autocast and GradScaler follow the device the strategy placed the model on."""
    return next(model.parameters(), torch.empty(0)).device.type


def needs_onednn_off(model: nn.Module, device_type: str) -> bool:
    """On CPUs oneDNN has no FP16/BF16 LSTM kernel ("could not create a primitive descriptor
    for the LSTM forward propagation primitive"): an LSTM not set to run in FP32
    (:func:`rayeffi.precision.recurrent.run_lstms_in_fp32`, which the policies call) makes
    the whole autocast run with oneDNN off, where torch's own LSTM computes in FP32."""
    return device_type == "cpu" and any(isinstance(m, nn.LSTM) and not runs_in_fp32(m) for m in model.modules())


def reduced_precision_autocast(device_type: str, dtype: torch.dtype, onednn_off: bool) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device_type, dtype=dtype))
    if onednn_off:
        stack.enter_context(torch.backends.mkldnn.flags(enabled=False))
    return stack


def fp32_layers(model: nn.Module, device_type: str = "cpu") -> dict[str, str]:
    """Layers that compute in FP32 under BF16/FP16 autocast, by module path -> type.

    Autocast has no reduced-precision GRU (any device) and, with oneDNN off on CPUs, the
    LSTM runs in FP32 too; a plain RNN (tanh/relu) follows the policy.
    """
    kinds = (nn.GRU, nn.LSTM) if device_type == "cpu" else (nn.GRU,)
    return {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, kinds)}


class BF16(Precision):
    """BF16 autocast, FP32 weights, no loss scaling.

    BF16 keeps FP32's 8-bit exponent (range to ~3e38, normals down to ~1e-38) with a
    7-bit mantissa, so gradients neither overflow nor underflow where FP32 would not:
    no scaler is needed. Matmuls and convolutions run in BF16 (on CPUs with
    avx512_bf16 / AMX and on Ampere+ GPUs, about twice FP32 throughput).
    """

    name = "bf16"
    dtype = torch.bfloat16

    def __init__(self) -> None:
        self.device_type = "cpu"
        self.onednn_off = False
        self.telemetry = PrecisionTelemetry()

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.device_type = _device_type(model)
        if self.device_type == "cpu":
            run_lstms_in_fp32(model)
        self.onednn_off = needs_onednn_off(model, self.device_type)

    def autocast(self) -> contextlib.AbstractContextManager:
        return reduced_precision_autocast(self.device_type, self.dtype, self.onednn_off)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        if self.telemetry.wants_sample:  # once per epoch: would FP16 lose these gradients?
            self.telemetry.record_sample(underflow_fraction(optimizer_grads(optimizer)))
        optimizer.step()
        self.telemetry.record_step(1.0, skipped=False)
        return True

    def metrics(self) -> dict[str, Any]:
        return self.telemetry.epoch_metrics(1.0, with_history=False)

    def state_dict(self) -> dict[str, Any]:
        return {"telemetry": self.telemetry.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.telemetry.load_state_dict(state.get("telemetry", {}))


class FP16(Precision):
    """FP16 autocast over FP32 weights, with dynamic or static loss scaling.

    ``backward`` computes ``grad(S * L)`` with ``S`` applied to the FP32 loss (an FP16
    loss times 2^16 would overflow before backward starts). ``step`` divides the
    gradients by ``S`` in FP32 (``GradScaler.unscale_``), skips the optimizer step if
    any gradient is inf/NaN, and updates ``S`` (x ``backoff_factor`` on overflow, x
    ``growth_factor`` after ``growth_interval`` clean steps; fixed if static).

    Data parallel: DDP all-reduces the gradients during ``backward``, before the inf
    check, so every rank checks the same numbers, skips the same steps and keeps the
    same scale, without a collective of its own.
    """

    name = "fp16"
    skips_on_overflow = True

    def __init__(
        self,
        loss_scale: str | float = "dynamic",
        init_scale: float = DEFAULT_INIT_SCALE,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        self.scaler_options = dict(
            loss_scale=loss_scale, init_scale=init_scale, growth_factor=growth_factor,
            backoff_factor=backoff_factor, growth_interval=growth_interval,
        )
        self.static_scale = None if loss_scale == "dynamic" else float(loss_scale)
        self.device_type = "cpu"
        self.onednn_off = False
        self.scaler: torch.amp.GradScaler | None = None
        self.telemetry = PrecisionTelemetry()
        self._unscaled = False  # this step's gradients are already divided by the scale

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.device_type = _device_type(model)
        if self.device_type == "cpu":
            run_lstms_in_fp32(model)
        self.onednn_off = needs_onednn_off(model, self.device_type)
        self.scaler = grad_scaler(self.device_type, **self.scaler_options)

    def autocast(self) -> contextlib.AbstractContextManager:
        return reduced_precision_autocast(self.device_type, torch.float16, self.onednn_off)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss.float())  # S applied in FP32

    def backward(self, loss: torch.Tensor) -> None:
        self.scale_loss(loss).backward()  # DDP all-reduces x S gradients

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        if not self._unscaled:
            self._grads_to_optimizer()
            self.scaler.unscale_(optimizer)  # FP32: g / S
            self._unscaled = True

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        self.unscale_gradients(optimizer)
        self._unscaled = False  # the next step's gradients arrive scaled
        grads = optimizer_grads(optimizer)
        overflow = has_non_finite(grads)  # host sync; the same on every rank (gradients are all-reduced)
        if not overflow:
            if self.telemetry.wants_sample:
                self.telemetry.record_sample(underflow_fraction(grads))
            optimizer.step()
            self._after_optimizer_step()
        scale_used = self.scaler.get_scale()
        self.scaler.update(self.static_scale)  # dynamic: backoff on overflow, growth after clean steps
        self.telemetry.record_step(scale_used, skipped=overflow)
        return not overflow

    def _grads_to_optimizer(self) -> None:
        """The optimizer's parameters already hold the gradients (FP32 weights)."""

    def _after_optimizer_step(self) -> None:
        """Nothing to copy back: the model's weights are the optimizer's."""

    def metrics(self) -> dict[str, Any]:
        return self.telemetry.epoch_metrics(self.scaler.get_scale())

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict(), "telemetry": self.telemetry.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.telemetry.load_state_dict(state.get("telemetry", {}))


class FP16Master(FP16):
    """The paper's recipe: FP16 weights, an FP32 master copy, loss scaling.

    :meth:`prepare_model` casts the weights to FP16 (norm layers stay FP32) before the
    strategy wraps the model, keeping an exact FP32 copy; :meth:`setup` points the
    optimizer at those FP32 masters. Each step copies the FP16 gradients into FP32,
    unscales and checks them there, updates the masters in FP32 and rounds them back
    into the FP16 weights. The checkpoint's ``model`` holds the FP16 weights; the
    exact FP32 masters are saved in ``precision.masters``.
    """

    name = "fp16-master"

    def __init__(self, **scaler_options: Any) -> None:
        super().__init__(**scaler_options)
        self._fp32_copies: dict[int, torch.Tensor] | None = None
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def prepare_model(self, model: nn.Module) -> nn.Module:
        self._fp32_copies = cast_to_fp16_(model)
        return model

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self._fp32_copies is None:
            raise RuntimeError("fp16-master: call prepare_model(model) before the strategy wraps it, then setup")
        super().setup(model, optimizer)
        self.pairs = point_optimizer_at_masters_(optimizer, self._fp32_copies)
        self._fp32_copies = {}

    def _grads_to_optimizer(self) -> None:
        grads_to_masters_(self.pairs)  # FP16 (x S) -> FP32 (x S), exact

    def _after_optimizer_step(self) -> None:
        masters_to_model_(self.pairs)  # FP32 -> FP16 weights for the next forward

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "masters": [master.detach() for _, master in self.pairs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "masters" in state:
            with torch.no_grad():
                for (_, master), saved in zip(self.pairs, state["masters"], strict=True):
                    master.copy_(saved)
            masters_to_model_(self.pairs)


PRECISIONS: dict[str, type[Precision]] = {"fp32": FP32, "bf16": BF16, "fp16": FP16, "fp16-master": FP16Master}
"""``precision.policy`` recipe value -> policy class."""


def build_precision(config: Any) -> Precision:
    """The policy a recipe's ``precision`` names (a ``PrecisionConfig`` or a policy name)."""
    if getattr(config, "policy", config) == "auto":
        raise ValueError("precision auto is resolved by the driver before the stage starts "
                         "(driver/precision_check.py): name a policy (fp32, bf16, fp16, fp16-master) here")
    if isinstance(config, str):
        return PRECISIONS[config]()
    return PRECISIONS[config.policy](**config.scaler_options())
