"""What a model needs to know about its data, decided once on the driver."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """Shape of one example and how many there are."""

    num_features: int
    num_classes: int
    image_shape: tuple[int, int, int] | None
    num_train: int
    num_val: int
