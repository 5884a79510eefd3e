"""The loopback check of multi-node runs (``rayeffi/bench/sockets.py``) tells a socket bound
off loopback from one on it, and reads Ray's single-machine address rule."""

from __future__ import annotations

import os
import socket

import pytest

from rayeffi.bench.sockets import LoopbackWatch, off_loopback, tcp_sockets
from rayeffi.stages.ray_session import _is_loopback_address

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc")


def test_a_listener_on_every_interface_is_found_and_loopback_ones_are_not():
    with socket.socket() as local, socket.socket() as everywhere:
        local.bind(("127.0.0.1", 0))
        local.listen()
        everywhere.bind(("0.0.0.0", 0))
        everywhere.listen()
        with socket.create_connection(local.getsockname()):
            mine = tcp_sockets([os.getpid()])
            found = off_loopback([os.getpid()])
            watch = LoopbackWatch()
            watch.sample()
    assert ("127.0.0.1", "LISTEN") in {(local_address, state) for _, local_address, _, state in mine}
    assert any(state == "ESTABLISHED" for *_, state in mine)
    assert [(address, state) for _, address, _, state in found] == [("0.0.0.0", "LISTEN")]
    assert watch.samples == 1 and {(address, state) for _, address, _, state in watch.findings} == {("0.0.0.0", "LISTEN")}


@pytest.mark.parametrize("address, loopback", [("127.0.0.1:6379", True), ("localhost:6379", True),
                                               ("10.0.0.5:6379", False), ("auto", False)])
def test_a_loopback_address_is_joined_as_given(address, loopback):
    assert _is_loopback_address(address) == loopback
