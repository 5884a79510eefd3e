"""A small convolutional network for small images (the 8x8 digits, 28x28 MNIST)."""

from __future__ import annotations

import torch
from torch import nn

from rayeffi.models.units import sequential_units


class ConvNet(nn.Module):
    """3x3 ``Conv -> ReLU`` blocks, a 2x2 max-pool after the last one, then an MLP head.

    There is no batch normalisation on purpose: per-worker batch statistics would make
    data-parallel training differ from single-process training, and parity between
    the two is the correctness contract of the data-parallel strategy.
    """

    def __init__(self, image_shape, num_classes: int, channels=(16, 32), hidden: int = 64, dropout: float = 0.0):
        super().__init__()
        in_channels, height, width = image_shape
        blocks: list[nn.Module] = []
        for out_channels in channels:
            blocks += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
            in_channels = out_channels
        blocks.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*blocks)
        flat = in_channels * (height // 2) * (width // 2)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU()]
        if dropout:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden, num_classes))
        self.classifier = nn.Sequential(*head)
        self.image_shape = tuple(image_shape)

    def forward(self, x):
        # rows arrive flat from Parquet: restore [N, C, H, W]
        x = x.reshape(x.shape[0], *self.image_shape)
        return self.classifier(self.features(x))

    def pipeline_units(self):
        """The layers in order, for the pipeline strategy (``parallel/pipeline_split.py``);
        the first unit restores the image shape, as ``forward`` does."""

        return [("image", ToImage(self.image_shape))] + sequential_units(self.features, "features.") + sequential_units(
            self.classifier, "classifier."
        )


class ToImage(nn.Module):
    """Flat rows ``[N, C*H*W]`` -> images ``[N, C, H, W]`` (no parameters)."""

    def __init__(self, image_shape):
        super().__init__()
        self.image_shape = tuple(image_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.image_shape)
