"""Sparse weight formats, as pure functions: a bitmask plus packed values, or CSR.

Sizes for a tensor of ``n`` float32 values with ``nnz`` non-zeros (``rows`` rows):

- dense:   ``4 n`` bytes
- bitmask: ``n / 8 + 4 nnz`` bytes      smaller than dense below ~97% density
- CSR:     ``8 (rows + 1) + 12 nnz``    (int64 indices) smaller only below ~33% density

Convolution weights are stored as ``[out_channels, in_channels * kh * kw]`` rows for CSR.
"""

from __future__ import annotations

import numpy as np
import torch


def encode_bitmask(tensor: torch.Tensor) -> dict:
    flat = tensor.detach().flatten().cpu()
    nonzero = flat != 0
    bits = np.packbits(nonzero.numpy())
    return {"shape": list(tensor.shape), "bits": torch.from_numpy(bits), "values": flat[nonzero].clone()}


def decode_bitmask(entry: dict) -> torch.Tensor:
    numel = int(np.prod(entry["shape"]))
    nonzero = torch.from_numpy(np.unpackbits(entry["bits"].numpy(), count=numel).astype(bool))
    flat = torch.zeros(numel, dtype=entry["values"].dtype)
    flat[nonzero] = entry["values"]
    return flat.view(entry["shape"])


def encode_csr(tensor: torch.Tensor) -> dict:
    matrix = tensor.detach().cpu().reshape(tensor.shape[0], -1)
    rows, columns = matrix.nonzero(as_tuple=True)  # row-major order
    indptr = torch.zeros(matrix.shape[0] + 1, dtype=torch.int64)
    indptr[1:] = torch.bincount(rows, minlength=matrix.shape[0]).cumsum(0)
    return {
        "shape": list(tensor.shape),
        "indptr": indptr,
        "indices": columns.to(torch.int64).clone(),  # a view would save the row indices too
        "values": matrix[rows, columns].contiguous(),
    }


def decode_csr(entry: dict) -> torch.Tensor:
    num_rows = entry["shape"][0]
    num_columns = int(np.prod(entry["shape"][1:])) if len(entry["shape"]) > 1 else 1
    rows = torch.repeat_interleave(torch.arange(num_rows), entry["indptr"].diff())
    matrix = torch.zeros(num_rows, num_columns, dtype=entry["values"].dtype)
    matrix[rows, entry["indices"]] = entry["values"]
    return matrix.view(entry["shape"])


ENCODERS = {"bitmask": (encode_bitmask, decode_bitmask), "csr": (encode_csr, decode_csr)}


def encode_state(state: dict[str, torch.Tensor], sparse_names, fmt: str) -> dict:
    """A weights_only-loadable file body: sparse layers encoded, every other tensor dense."""
    encode = ENCODERS[fmt][0]
    return {
        "format": f"rayeffi-sparse/{fmt}",
        "sparse": {name: encode(state[name]) for name in sparse_names},
        "dense": {name: value for name, value in state.items() if name not in sparse_names},
    }


def decode_state(body: dict) -> dict[str, torch.Tensor]:
    fmt = body["format"].rsplit("/", 1)[-1]
    decode = ENCODERS[fmt][1]
    return {**body["dense"], **{name: decode(entry) for name, entry in body["sparse"].items()}}
