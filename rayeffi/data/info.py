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
    vocab_size: int | None = None
    """Token ids lie in ``[0, vocab_size)`` (per-token tasks; ``num_features`` is then ``seq_len``
    and ``num_classes`` the vocabulary, or the tags of token classification)."""
