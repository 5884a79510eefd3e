"""Ending a spawned gloo rank safely."""

from __future__ import annotations

import os
import socket

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
