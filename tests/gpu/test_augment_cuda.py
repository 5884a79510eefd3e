"""Augmentation draws its choices on the CPU: the same seed gives the same batch on CUDA."""

from __future__ import annotations

import torch

from rayeffi.data.augment import Augment


def test_cuda_gives_the_cpu_result_for_the_same_seed(cuda):
    images = torch.rand(16, 3, 8, 6, generator=torch.Generator().manual_seed(123))
    augment = Augment(crop_padding=2, horizontal_flip=True)
    on_cuda = augment(images.to(cuda), torch.Generator().manual_seed(3))
    assert on_cuda.device.type == "cuda"
    assert torch.equal(on_cuda.cpu(), augment(images, torch.Generator().manual_seed(3)))
