"""Seeded image augmentation on batches: random crop with zero padding, horizontal flip.

Every random choice is drawn on the CPU from the caller's ``torch.Generator`` and only
then moved to the images' device, so one seed gives the same crops and flips on CPU
and CUDA, whatever else draws from the device's own generator. The ops themselves are
pure functions over the whole batch (no per-image loop); ``Augment`` draws the choices
and applies them. Padded random crops and flips are the standard CIFAR augmentation
(He et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    """Crop each image of ``[N, C, H, W]`` to ``H x W`` out of itself zero-padded by ``padding``.

    ``offsets`` ``[N, 2]`` (int64) holds each image's (row, column) of the crop's top-left
    corner in the padded image, each in ``0 .. 2 * padding``; ``padding`` everywhere is
    the identity.
    """
    num_images, num_channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = offsets.to(images.device)
    rows = offsets[:, 0, None] + torch.arange(height, device=images.device)  # [N, H]
    cols = offsets[:, 1, None] + torch.arange(width, device=images.device)  # [N, W]
    batch = torch.arange(num_images, device=images.device)[:, None, None, None]
    channels = torch.arange(num_channels, device=images.device)[None, :, None, None]
    # one gather for the whole batch: the four index tensors broadcast to [N, C, H, W]
    return padded[batch, channels, rows[:, None, :, None], cols[:, None, None, :]]


def horizontal_flip(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images of ``[N, C, H, W]`` whose entry of ``flip`` ``[N]`` (bool) is set."""
    return torch.where(flip.to(images.device)[:, None, None, None], images.flip(3), images)


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(images - mean) / std`` per channel of ``[N, C, H, W]``; ``mean`` and ``std`` have C entries."""
    mean_tensor = torch.tensor(mean, dtype=images.dtype, device=images.device)[None, :, None, None]
    std_tensor = torch.tensor(std, dtype=images.dtype, device=images.device)[None, :, None, None]
    return (images - mean_tensor) / std_tensor


@dataclass(frozen=True)
class Augment:
    """The augmentations to apply to each training batch; the defaults change nothing."""

    crop_padding: int = 0
    """Random crop of the original size from the image zero-padded by this many pixels on each side (0: off)."""
    horizontal_flip: bool = False
    """Flip each image left-right with probability 0.5."""

    def __post_init__(self):
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding is {self.crop_padding}: give 0 (no crop) or a positive number of pixels")

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``images`` ``[N, C, H, W]`` with choices drawn from ``generator`` (a CPU generator).

        The crop offsets are drawn first, then the flips; a switched-off augmentation
        draws nothing (so for one seed, turning the crop on changes which images flip).
        """
        num_images = images.shape[0]
        if self.crop_padding > 0:
            offsets = torch.randint(0, 2 * self.crop_padding + 1, (num_images, 2), generator=generator)
            images = random_crop(images, self.crop_padding, offsets)
        if self.horizontal_flip:
            flip = torch.rand(num_images, generator=generator) < 0.5
            images = horizontal_flip(images, flip)
        return images


class RowAugment:
    """:class:`Augment` and :func:`normalise` on the flat feature rows a worker reads.

    Rows ``[N, C*H*W]`` are viewed as images ``image_shape``. Training batches get the
    random crops and flips, drawn from a generator seeded by ``(seed, epoch, rank)`` (the
    same draws for a worker restarted at that epoch); validation batches are only
    normalised. ``mean``/``std`` None: no normalisation.
    """

    def __init__(self, augment: Augment, image_shape: tuple[int, int, int], seed: int, rank: int,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
        self.augment, self.image_shape = augment, tuple(image_shape)
        self.seed, self.rank = seed, rank
        self.mean, self.std = mean, std
        self.generator = torch.Generator()

    def start_epoch(self, epoch: int) -> None:
        self.generator.manual_seed((self.seed * 1_000_003 + epoch) * 1009 + self.rank)

    def train(self, rows: torch.Tensor) -> torch.Tensor:
        images = self.augment(rows.reshape(rows.shape[0], *self.image_shape), self.generator)
        return self._normalised(images).reshape(rows.shape)

    def eval(self, rows: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return rows
        return self._normalised(rows.reshape(rows.shape[0], *self.image_shape)).reshape(rows.shape)

    def _normalised(self, images: torch.Tensor) -> torch.Tensor:
        return images if self.mean is None else normalise(images, self.mean, self.std)
