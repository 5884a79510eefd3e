"""The distillation technique: plugs :mod:`rayeffi.techniques.distill.losses` into the step.

The teachers are frozen: eval mode, ``requires_grad`` off, run under ``torch.no_grad``
inside the step's autocast, so they compute in bf16/fp16 when the precision policy
does. With ``distill.cache`` the step never runs them: the batch brings each row's
teacher logits (column ``teacher_logits``, written once by :mod:`rayeffi.techniques.distill.soft_labels`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from rayeffi.data.info import DatasetInfo
from rayeffi.models import build_model
from rayeffi.models.inputs import call_model
from rayeffi.precision.recurrent import run_lstms_in_fp32
from rayeffi.techniques.base import Technique
from rayeffi.techniques.distill.losses import FeatureCapture, build_adapter, hint_loss, real_positions, soft_target_loss
from rayeffi.weights import load_weights, read_weights
from rayeffi.task import logits_of

if TYPE_CHECKING:
    # pure configuration (pydantic): annotations only, so the step imports without pydantic
    from rayeffi.techniques.distill.config import DistillConfig

CACHE_COLUMN = "teacher_logits"
"""Batch column of cached logits: ``[N, K * C]`` for ``K`` teachers and ``C`` classes."""


def load_teachers(config: DistillConfig, info: DatasetInfo) -> list[nn.Module]:
    """Every teacher built from its model config and checkpoint, frozen in eval mode."""
    teachers = []
    for teacher in config.teachers:
        if teacher.module is not None:  # passed from Python (``rayeffi.prepare``)
            teachers.append(freeze(teacher.module))
            continue
        model = build_model(teacher.model, info)
        load_weights(model, read_weights(teacher.checkpoint), prefix=teacher.prefix, strict=teacher.strict,
                     source=f"weights {teacher.checkpoint}", key="teachers")
        teachers.append(freeze(model))
    return teachers


def freeze(model: nn.Module) -> nn.Module:
    model.eval()  # dropout off: the soft targets are the teacher's deterministic predictions
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    # under the step's CPU autocast a teacher's LSTM runs in FP32 as the student's does (oneDNN: no BF16 LSTM)
    return run_lstms_in_fp32(model)


class Distillation(Technique):
    """KD (Hinton 2015) plus optional FitNets hints (Romero 2015) from one or more teachers.

    ``teachers`` are frozen modules, or ``None`` when the batches carry cached logits.
    Hint adapters are this technique's own parameters: added to the optimizer as a new
    parameter group, averaged across data-parallel workers here (DDP does not see them),
    and saved in the technique's state.
    """

    name = "distill"

    def __init__(self, config: DistillConfig, teachers: list[nn.Module] | None, num_features: int):
        self.config = config
        self.teachers = teachers
        self.num_features = num_features
        self.adapters = nn.ModuleList()
        self.hints_only = False
        self._student_capture: FeatureCapture | None = None
        self._teacher_captures: dict[int, FeatureCapture] = {}
        self._sums = torch.zeros(4, dtype=torch.float64)  # soft loss, hint loss, batches, CE

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        device = next(model.parameters()).device
        self._sums = self._sums.to(device)  # a device tensor: NCCL all-reduces nothing else
        if self.teachers is not None:
            self.teachers = [teacher.to(device) for teacher in self.teachers]
        hints = self.config.hints
        if not hints:
            return
        self._student_capture = FeatureCapture(model, [h.student for h in hints])
        for index in sorted({h.teacher_index for h in hints}):
            paths = [h.teacher for h in hints if h.teacher_index == index]
            self._teacher_captures[index] = FeatureCapture(self.teachers[index], paths)
        student_shapes, teacher_shapes = self._feature_shapes(model)
        for hint, student_shape, teacher_shape in zip(hints, student_shapes, teacher_shapes):
            adapter = build_adapter(student_shape, teacher_shape) or nn.Identity()
            self.adapters.append(adapter.to(next(model.parameters()).device))
        parameters = list(self.adapters.parameters())
        if parameters:
            if dist.is_initialized():
                for parameter in parameters:  # sync point: every worker starts from rank 0's adapters
                    dist.broadcast(parameter.data, src=0)
            optimizer.add_param_group({"params": parameters})

    @torch.no_grad()
    def _feature_shapes(self, model: nn.Module):
        """Shapes (without the batch dim) of every hinted feature, from one dummy forward."""
        parameter = next(model.parameters())
        probe = torch.zeros(2, self.num_features, device=parameter.device)
        was_training = model.training
        model.eval()
        call_model(model, probe.to(parameter.dtype))  # fp16-master students hold FP16 weights
        model.train(was_training)
        for index, teacher in enumerate(self.teachers):
            if index in self._teacher_captures:
                call_model(teacher, probe)
        hints = self.config.hints
        student = [tuple(self._student_capture.outputs[h.student].shape[1:]) for h in hints]
        teacher = [tuple(self._teacher_captures[h.teacher_index].outputs[h.teacher].shape[1:]) for h in hints]
        return student, teacher

    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.hints_only = epoch < self.config.hint_epochs  # FitNets stage 1: hints alone
        self._sums.zero_()

    def loss(self, loss, outputs, inputs, targets, extras):
        config = self.config
        teacher_logits = self._teacher_logits(inputs, extras)
        hint = self._hint_loss() if config.hints and (self.hints_only or config.hint_epochs == 0) else None
        if self.task.per_token and not self.hints_only:  # per-token KD: the KL at each real position
            outputs, teacher_logits = real_positions(outputs, teacher_logits, targets, self.task.ignore_index)
        soft = None if self.hints_only else soft_target_loss(outputs, teacher_logits, config.temperature)
        zero = torch.zeros((), dtype=torch.float64, device=self._sums.device)
        self._sums += torch.stack([  # on the device: no host sync per step
            zero if soft is None else soft.detach().double(), zero if hint is None else hint.detach().double(),
            zero + 1.0, loss.detach().double()])
        if self.hints_only:
            # 0 * loss keeps every student parameter in the graph, as DDP requires of each step
            return hint + 0.0 * loss
        # loss is the step's CE(s, y): this is kd_loss(s, t, y, T, alpha) without recomputing it
        total = config.alpha * soft + (1.0 - config.alpha) * loss
        return total if hint is None else total + hint

    def _teacher_logits(self, inputs: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[N, C]`` for one teacher, ``[K, N, C]`` for an ensemble of ``K``; each teacher gets the
        batch's named inputs its forward takes (``models/inputs.py``), whatever the student takes."""
        if self.teachers is None:
            cached = extras[CACHE_COLUMN].float()
            num_teachers = len(self.config.teachers)
            logits = cached.reshape(cached.shape[0], num_teachers, -1).transpose(0, 1)
        else:
            with torch.no_grad():  # frozen teachers: no graph, no gradients
                logits = torch.stack([logits_of(call_model(teacher, inputs, extras)) for teacher in self.teachers])
        return logits[0] if logits.shape[0] == 1 else logits

    def _hint_loss(self) -> torch.Tensor:
        total = 0.0
        for hint, adapter in zip(self.config.hints, self.adapters):
            student = self._student_capture.outputs[hint.student]
            teacher = self._teacher_captures[hint.teacher_index].outputs[hint.teacher]
            total = total + hint.weight * hint_loss(student, teacher, adapter)
        return total

    def after_backward(self, model: nn.Module) -> None:
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return
        for parameter in self.adapters.parameters():
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)  # sync point: adapters are outside DDP
                parameter.grad /= dist.get_world_size()

    def metrics(self) -> dict[str, float]:
        """The epoch's mean KD (and hint) terms over every worker's batches (every rank calls it)."""
        sums = self._sums.clone()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)  # sync point: the figure is the whole epoch's, not rank 0's shard
        soft_sum, hint_sum, batches, ce_sum = sums.tolist()
        metrics = {"distill_hints_only": float(self.hints_only)}
        if batches:
            # the two terms apart: the step's loss is alpha * kd_soft_loss + (1 - alpha) * kd_ce_loss
            metrics["kd_soft_loss"] = soft_sum / batches
            metrics["kd_ce_loss"] = ce_sum / batches
            if self.config.hints:
                metrics["hint_loss"] = hint_sum / batches
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"adapters": self.adapters.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "adapters" in state:
            self.adapters.load_state_dict(state["adapters"])

    def inference_modules(self) -> list[nn.Module]:
        return list(self.teachers or ())  # none when the batches bring cached logits

    def teardown(self) -> None:
        for capture in [self._student_capture, *self._teacher_captures.values()]:
            if capture is not None:
                capture.remove()
