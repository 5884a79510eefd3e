"""Processes a benchmark spawns: started with a deadline, ended without gloo's teardown.

torch 2.13's backward stashes a Python object in the thread-local state that every
collective launched during backward captures (DDP's gradient all-reduce, a pipeline's
sends). The gloo worker thread that drops such a finished work needs the GIL;
destroying the process group joins that thread while holding the GIL, and when the two
overlap the rank hangs for ever (the native-DDP baseline of ``rayeffi bench ddp`` was
seen stuck there for minutes). A rank therefore ends with :func:`end_rank`: a barrier,
then ``os._exit`` with its results already written.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Callable

import torch.distributed as dist
import torch.multiprocessing as mp


class BenchTimeout(RuntimeError):
    """A benchmark (or the ranks it spawned) ran past its deadline."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for MASTER_PORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def end_rank() -> None:
    """Barrier, then leave the process without destroying the gloo group (see the module doc)."""
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn: Callable, args: tuple, nprocs: int, timeout_s: float, what: str, start_method: str = "spawn") -> None:
    """Run ``fn(rank, *args)`` in ``nprocs`` processes; kill them all and raise past ``timeout_s``."""
    context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method=start_method)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):  # raises if a rank failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise BenchTimeout(f"{what}: the {nprocs} processes did not finish in {timeout_s:.0f} s (killed); "
                               "the machine may be busy: rerun on a quieter machine or with --quick")
