"""Techniques on the GPU: DSD masks stay exact zeros; KD with the teacher on the device."""

from __future__ import annotations

import torch

from rayeffi.techniques.base import Technique
from rayeffi.techniques.distill.losses import kd_loss
from rayeffi.techniques.dsd.sparsity import apply_masks, magnitude_masks, mask_gradients, prunable_weights
from rayeffi.precision import PRECISIONS
from rayeffi.worker.step import train_step

from cuda_problems import mlp_problem, needs_pydantic, parts_on


class Masks(Technique):
    """DSD's sparse phase from its pure functions: mask gradients after backward, weights after the step."""

    def __init__(self, sparsity: float):
        self.sparsity = sparsity

    def setup(self, model, optimizer):
        self.weights = prunable_weights(model)
        self.masks = magnitude_masks(self.weights, {name: self.sparsity for name in self.weights})
        apply_masks(self.weights, self.masks)

    def after_backward(self, model):
        mask_gradients(self.weights, self.masks)

    def after_step(self, model):
        apply_masks(self.weights, self.masks)


def test_dsd_masks_are_exact_zeros_on_cuda(cuda):
    model, inputs, targets = mlp_problem()
    masks = Masks(0.5)
    parts = parts_on(cuda, PRECISIONS["bf16"](), model, techniques=[masks], momentum=0.9)
    for _ in range(5):
        train_step(parts, inputs.to(cuda), targets.to(cuda))
    for name, weight in masks.weights.items():
        assert weight.device.type == cuda.type and masks.masks[name].device == weight.device  # beside their weights
        assert torch.count_nonzero(weight[~masks.masks[name]]) == 0


def test_the_dsd_technique_keeps_exact_zeros_on_cuda(cuda):
    needs_pydantic()
    from rayeffi.techniques.dsd.config import DsdConfig
    from rayeffi.techniques.dsd import DenseSparseDense

    model, inputs, targets = mlp_problem()
    technique = DenseSparseDense(DsdConfig(name="dsd", rounds=[0.5], sparse_epochs=1, redense_epochs=1))
    parts = parts_on(cuda, PRECISIONS["fp16"](), model, techniques=[technique], momentum=0.9)
    technique.on_epoch_start(0, parts.model, parts.optimizer)
    for _ in range(3):
        train_step(parts, inputs.to(cuda), targets.to(cuda))
    for name, mask in technique.masks.items():
        weight = technique.weights[name]
        assert mask.device == weight.device and torch.count_nonzero(weight[~mask]) == 0


class TeacherOnDevice(Technique):
    """Hinton KD with a frozen teacher that computes inside the step's autocast, on the GPU."""

    def __init__(self, teacher):
        self.teacher = teacher

    def loss(self, loss, outputs, inputs, targets, extras):
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        return kd_loss(outputs.float(), teacher_logits.float(), targets, temperature=4.0, alpha=0.7)


def test_kd_with_the_teacher_on_cuda_matches_the_cpu(cuda):
    def run(device):
        teacher, _, _ = mlp_problem(seed=7)
        teacher = teacher.to(device).eval().requires_grad_(False)
        student, inputs, targets = mlp_problem()
        parts = parts_on(device, PRECISIONS["fp32"](), student, techniques=[TeacherOnDevice(teacher)])
        return torch.stack([train_step(parts, inputs.to(device), targets.to(device)) for _ in range(5)]).cpu()

    torch.testing.assert_close(run(cuda), run(torch.device("cpu")), rtol=1e-4, atol=1e-5)
