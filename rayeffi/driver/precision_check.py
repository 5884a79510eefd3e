"""The driver's precision check: the stage's step timed in its reduced policy against FP32, and ``auto`` resolved.

Runs in the preflight (``run`` and ``validate``), after the model's dry forward, on a
fresh pair of models with identical weights: rayeffi's own ``train_step`` (the stage's
optimizer, one worker's share of the batch, as many torch threads as a worker has) in
FP32 and in the reduced policy, alternating (``precision/timing.py``). Techniques are
left out: they add the same work under either policy. An FP32 stage is not timed, nor a
GPU stage on a driver without a GPU (the workers' device is not here to time).

``auto`` is decided here, once, on the driver: the run's stages carry the chosen policy to
every worker (:func:`with_policy`) and ``summary.json`` records the choice and its times.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from rayeffi.errors import UserError
from rayeffi.precision import PRECISIONS
from rayeffi.precision.timing import PolicyTiming, auto_choice, slowdown_warning, time_alternating


@dataclass(frozen=True)
class PrecisionChoice:
    """What the check found for one stage: the policy it runs and the timing behind it."""

    requested: str
    policy: str
    timing: PolicyTiming | None
    note: str = ""
    """Why nothing was timed, where nothing was."""

    def as_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"requested": self.requested, "policy": self.policy}
        if self.timing is not None:
            entry["timing"] = self.timing.as_dict()
        if self.note:
            entry["note"] = self.note
        return entry


def with_policy(stage, policy: str):
    """``stage`` with its precision set to ``policy`` (the loss-scaling keys at their defaults)."""
    from rayeffi.recipe.sections import PrecisionConfig

    return stage.model_copy(update={"precision": PrecisionConfig(policy=policy)})


def candidate_policy(stage, device_type: str) -> str | None:
    """The reduced policy to time: the stage's own, or for ``auto`` the one this device runs fastest
    and the stage can run (BF16; FP16 with dynamic loss scaling on a GPU without BF16), if any."""
    from rayeffi.recipe.compat import check_compatibility

    policy = stage.precision.policy
    if policy != "auto":
        return None if policy == "fp32" else policy
    bf16_fast = device_type == "cpu" or torch.cuda.is_bf16_supported()
    candidate = "bf16" if bf16_fast else "fp16"
    try:
        check_compatibility(with_policy(stage, candidate))  # e.g. intra_layer runs fp32 only
    except UserError:
        return None
    return candidate


def timing_device(stage) -> torch.device | None:
    """Where the stage's workers compute, if this process can reach that device."""
    if stage.scaling.use_gpu:
        return torch.device("cuda") if torch.cuda.is_available() else None
    return torch.device("cpu")


@contextlib.contextmanager
def _worker_threads(stage):
    """As many torch threads as one worker has (``worker/loop.py``); local mode keeps the driver's."""
    previous = torch.get_num_threads()
    if stage.scaling.num_workers:
        torch.set_num_threads(max(1, int(stage.scaling.resources_per_worker.get("CPU", 1))))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_stage_step(stage, info, rows, task, policy: str, device: torch.device) -> PolicyTiming:
    """The stage's training step in ``policy`` and in FP32 on ``device``, median milliseconds each."""
    from rayeffi.models import build_model
    from rayeffi.parallel import DataParallel
    from rayeffi.worker.build import assemble
    from rayeffi.worker.optim import build_optimizer
    from rayeffi.worker.step import train_step

    inputs, targets = rows[0].to(device), rows[1].to(device)
    extras = {name: tensor.to(device) for name, tensor in (rows[2] if len(rows) > 2 else {}).items()}

    def parts_for(name: str):
        torch.manual_seed(stage.seed)  # identical starting weights under both policies
        options = stage.precision.scaler_options() if name == stage.precision.policy else {}
        return assemble(build_model(stage.model, info), DataParallel(device=device), PRECISIONS[name](**options),
                        lambda model: build_optimizer(stage.optimizer, model), task=task)

    parts = {name: parts_for(name) for name in ("fp32", policy)}
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with _worker_threads(stage):
        times = time_alternating({name: (lambda p=p: train_step(p, inputs, targets, extras))
                                  for name, p in parts.items()}, synchronize=synchronize)
    return PolicyTiming(policy, times[policy], times["fp32"], device.type, len(inputs))


def check_precision(stage, info, rows, task, echo=print) -> PrecisionChoice:
    """Time the stage's reduced policy against FP32 where it can matter; warn, or resolve ``auto``.

    ``rows``: one worker's batch of real rows (features, labels[, named inputs]). Prints one
    ``warning:`` line for a reduced policy slower than FP32 by more than 10%, and one line
    saying what ``auto`` picked.
    """
    requested = stage.precision.policy
    device = timing_device(stage)
    candidate = candidate_policy(stage, device.type) if device is not None else None
    if requested == "fp32":
        choice = PrecisionChoice(requested, "fp32", None)
    elif device is None:
        choice = PrecisionChoice(requested, "fp32" if requested == "auto" else requested, None,
                                 "not timed: the stage runs on GPUs and this driver has none")
    elif candidate is None:  # auto where no reduced policy fits the stage
        choice = PrecisionChoice(requested, "fp32", None, "no reduced policy runs with this stage")
    else:
        try:
            timing = time_stage_step(stage, info, rows, task, candidate, device)
        except Exception as exc:  # auto: a policy the model cannot run in is not a candidate
            if requested != "auto":
                raise
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return _announce(stage, PrecisionChoice(requested, "fp32", None, f"{candidate} failed: {first_line}"), echo)
        policy = auto_choice(timing) if requested == "auto" else requested
        choice = PrecisionChoice(requested, policy, timing)
        warning = None if requested == "auto" else slowdown_warning(timing, f"stages.{stage.name}.precision")
        if warning:
            echo(warning)
    return _announce(stage, choice, echo)


def _announce(stage, choice: PrecisionChoice, echo) -> PrecisionChoice:
    if choice.requested == "auto":
        why = choice.timing.describe() if choice.timing else choice.note
        echo(f"[{stage.name}] precision auto: {choice.policy} ({why})")
    return choice
