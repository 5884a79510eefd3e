"""Which TCP sockets a set of processes holds (Linux ``/proc``): the loopback check of a
multi-node run on one machine (``bench scaling``'s multinode point, tests/ray/test_multinode.py).

A Ray started for a test or a benchmark must bind and be reached on 127.0.0.0/8 only: a
socket listening on another address (0.0.0.0 included) or talking to one is a finding.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from pathlib import Path

STATES = {"01": "ESTABLISHED", "0A": "LISTEN", "02": "SYN_SENT", "03": "SYN_RECV"}
"""The TCP states that matter here (``include/net/tcp_states.h``); closing sockets are left out."""


def _address(hex_address: str) -> str:
    """``0100007F:1F90`` (little-endian words, as /proc writes them) -> ``127.0.0.1``."""
    raw = bytes.fromhex(hex_address.split(":")[0])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:  # the process has ended
        pass
    return inodes


def tcp_sockets(pids) -> list[tuple[int, str, str, str]]:
    """``(pid, local address, remote address, state)`` of every TCP socket of ``pids``."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if inode in owner and state in STATES:
                found.append((owner[inode], _address(local), _address(remote), STATES[state]))
    return found


def off_loopback(pids) -> list[tuple[int, str, str, str]]:
    """The sockets of ``pids`` bound or connected outside 127.0.0.0/8 (a listener's remote is unset)."""
    return [s for s in tcp_sockets(pids)
            if not _is_loopback(s[1]) or (s[3] != "LISTEN" and not _is_loopback(s[2]))]


class LoopbackWatch:
    """Samples the sockets of every process below this one (Ray's GCS, raylets, workers,
    agents) every ``interval_s`` while open; ``findings`` are those off loopback."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.findings: set[tuple[str, str, str, str]] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoopbackWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        from rayeffi.driver.supervise import descendants

        pids = {pid for pid, _ in descendants(os.getpid())} | {os.getpid()}
        names = {pid: _name(pid) for pid in pids}
        self.findings |= {(names.get(pid, str(pid)), local, remote, state)
                          for pid, local, remote, state in off_loopback(pids)}
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").rsplit("/", 1)[-1]
    except OSError:
        return str(pid)
