"""Seeded batch augmentation (rayeffi.data.augment): reproducible, and equal to a plain per-image reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rayeffi.data.augment import Augment, horizontal_flip, normalise, random_crop


def _images(num_images=16, num_channels=3, height=8, width=6):
    return torch.rand(num_images, num_channels, height, width, generator=torch.Generator().manual_seed(123))


def _seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("augment", [Augment(crop_padding=2), Augment(horizontal_flip=True),
                                     Augment(crop_padding=3, horizontal_flip=True)])
def test_same_seed_same_output_and_another_seed_differs(augment):
    images = _images()
    first, again = augment(images, _seeded(0)), augment(images, _seeded(0))
    assert torch.equal(first, again)
    assert not torch.equal(first, augment(images, _seeded(1)))


def test_defaults_change_nothing():
    images = _images()
    assert torch.equal(Augment()(images, _seeded(0)), images)


def test_crop_matches_a_per_image_loop_at_the_drawn_offsets():
    images, padding = _images(), 2
    out = Augment(crop_padding=padding)(images, _seeded(7))
    # the same draw Augment makes, then a plain loop over the images
    offsets = torch.randint(0, 2 * padding + 1, (len(images), 2), generator=_seeded(7))
    padded = F.pad(images, (padding,) * 4)
    height, width = images.shape[2:]
    expected = torch.stack([padded[n, :, top:top + height, left:left + width]
                            for n, (top, left) in enumerate(offsets.tolist())])
    assert out.shape == images.shape
    assert torch.equal(out, expected)
    assert len({tuple(row) for row in offsets.tolist()}) > 1  # the offsets vary across the batch


def test_crop_at_the_centre_offset_is_the_identity():
    images = _images()
    offsets = torch.full((len(images), 2), 3)
    assert torch.equal(random_crop(images, 3, offsets), images)


def test_flip_mirrors_exactly_the_drawn_images():
    images = _images()
    out = Augment(horizontal_flip=True)(images, _seeded(5))
    flip = torch.rand(len(images), generator=_seeded(5)) < 0.5
    assert 0 < int(flip.sum()) < len(images)
    assert torch.equal(out[flip], torch.flip(images[flip], dims=[3]))
    assert torch.equal(out[~flip], images[~flip])
    assert torch.equal(horizontal_flip(images, torch.ones(len(images), dtype=torch.bool)), images.flip(3))


def test_normalise_per_channel():
    images = _images(num_channels=2)
    out = normalise(images, (0.5, 0.25), (2.0, 0.5))
    assert torch.allclose(out[:, 0], (images[:, 0] - 0.5) / 2.0)
    assert torch.allclose(out[:, 1], (images[:, 1] - 0.25) / 0.5)


def test_negative_padding_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="crop_padding is -1"):
        Augment(crop_padding=-1)



def test_row_augment_draws_per_seed_epoch_and_rank_and_only_normalises_validation():
    from rayeffi.data.augment import RowAugment

    rows = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 108)

    def draw(seed, epoch, rank, mean=None, std=None):
        augment = RowAugment(Augment(crop_padding=2, horizontal_flip=True), (3, 6, 6), seed, rank, mean, std)
        augment.start_epoch(epoch)
        return augment, augment.train(rows)

    _, first = draw(0, 1, 0)
    assert first.shape == rows.shape
    assert torch.equal(first, draw(0, 1, 0)[1])  # a restarted worker draws the same
    assert not torch.equal(first, draw(0, 2, 0)[1]) and not torch.equal(first, draw(0, 1, 1)[1])
    plain, _ = draw(0, 1, 0)
    assert torch.equal(plain.eval(rows), rows)  # validation: no crops, no flips
    normalised, _ = draw(0, 1, 0, mean=(1.0, 2.0, 3.0), std=(2.0, 2.0, 2.0))
    expected = (rows.reshape(2, 3, 6, 6) - torch.tensor([1.0, 2.0, 3.0])[None, :, None, None]) / 2.0
    assert torch.equal(normalised.eval(rows), expected.reshape(2, 108))
