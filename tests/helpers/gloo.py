"""Ending a spawned gloo rank safely."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def end_rank() -> None:
    """Barrier, then leave the spawned process without Python's teardown.

    torch 2.13's backward stashes a Python object (a ``contextvars`` context) in the
    thread-local state that every collective launched during backward captures (DDP's
    gradient all-reduce, a pipeline's sends). The gloo worker thread that drops such a
    finished work needs the GIL; destroying the process group joins that thread while
    holding the GIL. When the two overlap the rank hangs for ever (seen in about one
    full unit run in three). Leaving with ``os._exit`` after a barrier skips the
    destruction; results are already on disk.
    """
    dist.barrier()
    os._exit(0)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for MASTER_PORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_model() -> torch.nn.Module:
    """The 2-layer MLP the gloo parity tests train (the same weights on every rank: seed 0)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def tiny_batches(steps: int, global_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` global batches of 10 features and a class among 4 (seed 1): ``[steps, batch, 10]``, ``[steps, batch]``."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(steps, global_batch, 10, generator=generator)
    return inputs, inputs[..., :4].argmax(-1)
