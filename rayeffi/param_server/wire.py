"""Gradients on the wire in FP32, BF16 or FP16; the servers keep FP32 (Micikevicius 2018).

BF16 has FP32's exponent range, so a plain cast loses only mantissa bits. FP16 spans
2^-24..65504: each tensor is multiplied by a power of two that puts its largest
magnitude near 2^14 before the cast (a power of two is exact in FP16, so this only
shifts the exponent), and the server divides by it in FP32. Small gradients then
underflow only relative to the tensor's own largest one, as with loss scaling.
"""

from __future__ import annotations

import math

import numpy as np
import torch

WIRE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_FP16_TARGET_EXPONENT = 14  # largest |g| lands in [2^13, 2^14]: headroom below 65504


def _fp16_scale(grad: torch.Tensor) -> float:
    largest = grad.abs().max().item() if grad.numel() else 0.0
    if largest == 0.0 or not math.isfinite(largest):
        return 1.0
    return 2.0 ** (_FP16_TARGET_EXPONENT - math.ceil(math.log2(largest)))


def to_wire(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy array (Ray ships those without pickling each tensor); BF16 travels as its int16 bits."""
    tensor = tensor.detach().contiguous()
    return tensor.view(torch.int16).numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


def from_wire(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(array))  # a writable copy of Ray's read-only buffer
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor


def encode_gradients(grads: dict[str, torch.Tensor], dtype: str) -> dict[str, tuple[np.ndarray, float, str]]:
    """``name -> (array in the wire dtype, scale, dtype)``; the true gradient is ``array / scale``."""
    wire = WIRE_DTYPES[dtype]
    encoded = {}
    for name, grad in grads.items():
        scale = _fp16_scale(grad) if dtype == "fp16" else 1.0
        encoded[name] = (to_wire((grad.float() * scale).to(wire).cpu()), scale, dtype)  # host copy for the wire
    return encoded


def decode_gradients(encoded: dict[str, tuple[np.ndarray, float, str]]) -> dict[str, torch.Tensor]:
    """Back to FP32 (the division by the scale happens in FP32)."""
    return {name: from_wire(array, WIRE_DTYPES[dtype]).float() / scale
            for name, (array, scale, dtype) in encoded.items()}
