"""The workers' torch process group, on loopback when every worker is on this machine.

Ray Train sets the group up with ``init_process_group(init_method="env://")``, whose
rendezvous store (c10d's ``TCPStore``) listens on every interface of rank 0's machine
(``::``), whatever ``MASTER_ADDR`` says: a local run would accept connections from the
network for as long as it trains. When rank 0's address is a loopback address (a
private local Ray binds there, ``stages/ray_session.py``), :class:`LoopbackTorchConfig`
makes the store listen on a socket bound to that address (``master_listen_fd``) and
builds the group on it; on a cluster, where the workers must reach rank 0 over the
network, Ray Train's own set-up runs unchanged. Gloo's own connections follow
``GLOO_SOCKET_IFNAME``, which a private Ray sets to the loopback interface.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from datetime import timedelta

import ray
import torch.distributed as dist
from ray.train._internal.utils import get_address_and_port
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

_LISTENER: dict[str, socket.socket] = {}
"""Rank 0's bound socket, kept open in its worker process while the store serves on it."""


class LoopbackTorchConfig(TorchConfig):
    @property
    def backend_cls(self):
        return _LoopbackTorchBackend


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig):
        address, _ = worker_group.execute_single(0, get_address_and_port)
        if not _is_loopback(address):
            return super().on_start(worker_group, backend_config)
        backend = backend_config.backend
        if backend is None:
            backend = "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"
        worker_group.execute(_set_torch_distributed_env_vars)
        port = worker_group.execute_single(0, _listen, address)
        world_size = len(worker_group)
        ray.get([
            worker_group.execute_single_async(rank, _join, backend, rank, world_size, address, port,
                                              backend_config.timeout_s)
            for rank in range(world_size)
        ])


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def _listen(address: str) -> int:
    """Rank 0: a socket bound to ``address`` on a free port, listening; returns the port."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((address, 0))
    listener.listen(128)
    _LISTENER["socket"] = listener
    return listener.getsockname()[1]


def _join(backend: str, rank: int, world_size: int, address: str, port: int, timeout_s: int) -> None:
    timeout = timedelta(seconds=timeout_s)
    listener = _LISTENER.get("socket") if rank == 0 else None
    store = dist.TCPStore(address, port, world_size, rank == 0, timeout,
                          master_listen_fd=listener.fileno() if listener is not None else None)
    os.environ.update(MASTER_ADDR=address, MASTER_PORT=str(port))
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)

