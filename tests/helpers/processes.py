"""What a process tree leaves running and where it listens, read from ``/proc`` (Linux)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import threading
import time
from pathlib import Path

from rayeffi.driver.supervise import alive, descendants

LISTEN = "0A"  # the TCP state code of a listening socket in /proc/net/tcp


def listening_sockets(pids) -> list[tuple[int, str, int]]:
    """``(pid, address, port)`` of every listening TCP socket the processes hold."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:  # gone, or not ours to read
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN and fields[9] in inodes:
                address, port = fields[1].split(":")
                found.append((inodes[fields[9]], _address(address), int(port, 16)))
    return found


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc prints each 32-bit word in host (little-endian) order
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    return str(address.ipv4_mapped or address) if address.version == 6 else str(address)


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def wait_until_gone(processes, timeout_s: float) -> list:
    """Poll until none of ``processes`` ((pid, start) pairs) is alive; return those still alive."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [p for p in processes if alive(p)]
        if not left:
            return []
        time.sleep(0.5)
    return [p for p in processes if alive(p)]


class RunningCommand:
    """A ``rayeffi run`` in its own process group (as a terminal job), its output collected as it comes."""

    def __init__(self, argv: list[str], cwd=None, env=None):
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True, cwd=cwd, env=env)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.seen: set = set()
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for_line(self, prefix: str, timeout_s: float) -> str:
        """The first stdout line starting with ``prefix``; the process tree is recorded while waiting."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.seen |= descendants(self.process.pid)
            for line in self.stdout:
                if line.startswith(prefix):
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.3)
        raise AssertionError(f"no line {prefix!r} within {timeout_s} s; stdout: {self.stdout[-5:]}, "
                             f"stderr: {self.stderr[-10:]}")

    def wait(self, timeout_s: float) -> int:
        code = self.process.wait(timeout=timeout_s)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def kill_group(self) -> None:
        """Last resort for a test that failed half-way: nothing of this run may outlive the test."""
        processes = self.seen | descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.kill()
        for pid, _ in processes:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
