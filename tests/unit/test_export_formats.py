"""Sparse formats: exact round trips and the size break-even points (no Ray)."""

from __future__ import annotations

import io

import pytest
import torch

from rayeffi.techniques.dsd.formats import decode_state, encode_state


def _sparse(shape, density, seed=0):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator)
    keep = torch.rand(shape, generator=generator) < density
    return values * keep


def _size(obj) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


@pytest.mark.parametrize("fmt", ["bitmask", "csr"])
@pytest.mark.parametrize("shape", [(64, 128), (16, 8, 3, 3), (7,)])
def test_round_trip_is_exact(fmt, shape):
    state = {"w": _sparse(shape, 0.4), "b": torch.randn(3)}
    body = encode_state(state, ["w"], fmt)
    loaded = decode_state(torch.load(io.BytesIO(_bytes(body)), weights_only=True))
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def _bytes(body) -> bytes:
    buffer = io.BytesIO()
    torch.save(body, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("density", "bitmask_smaller", "csr_smaller"),
    [(0.95, True, False), (0.5, True, False), (0.3, True, True), (0.99, False, False)],
)
def test_size_break_even(density, bitmask_smaller, csr_smaller):
    state = {"w": _sparse((256, 256), density)}
    dense = _size(state)
    assert (_size(encode_state(state, ["w"], "bitmask")) < dense) is bitmask_smaller
    assert (_size(encode_state(state, ["w"], "csr")) < dense) is csr_smaller
