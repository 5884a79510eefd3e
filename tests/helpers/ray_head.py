"""A real ``ray start --head`` for tests: free ports, 127.0.0.1, its own temp dir, its own token.

Only the processes this head started are stopped (by PID): the ``ray start --block``
process, its descendants, and any process whose command line names this head's
temp dir. ``ray stop`` would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PORT_OPTIONS = (
    "--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
    "--object-manager-port", "--node-manager-port",
)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def auth_env() -> dict[str, str]:
    """Token auth (this Ray's default) with a token of this head's own, not ``~/.ray/auth_token``."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex,
            "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass
class RayHead:
    process: subprocess.Popen
    temp_dir: Path
    gcs_address: str
    dashboard_url: str
    env: dict[str, str] = field(default_factory=dict)
    """The environment a client of this head needs (the token)."""

    def stop(self) -> None:
        pids = _descendants(self.process.pid) | _cmdline_mentions(str(self.temp_dir)) | {self.process.pid}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 5
            while time.time() < deadline and any(_alive(pid) for pid in pids):
                time.sleep(0.1)
        self.process.wait(timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)  # its logs and sockets


def start_head(num_cpus: int, resources: dict[str, float] | None = None, timeout_s: float = 90) -> RayHead:
    temp_dir = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short: Unix socket paths are capped at 107
    ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS))))
    env = auth_env()
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
               "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--include-dashboard", "true",
               "--temp-dir", str(temp_dir), "--num-cpus", str(num_cpus), "--disable-usage-stats"]
    command += [item for option, port in ports.items() for item in (option, str(port))]
    if resources:
        command += ["--resources", json.dumps(resources)]
    # a job's entrypoint runs `python ...` on the head: this interpreter, activated venv or not
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    # Ray's single-machine switch: with --node-ip-address alone the GCS, raylet and agents
    # still listen on every interface; a one-node test head needs none of them there
    loopback = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    process = subprocess.Popen(command, env={**os.environ, **env, **loopback, "PATH": path}, stdout=subprocess.DEVNULL,
                               stderr=open(temp_dir / "ray-start.log", "w"), start_new_session=True)
    head = RayHead(process, temp_dir, f"127.0.0.1:{ports['--port']}", f"http://127.0.0.1:{ports['--dashboard-port']}", env)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited: {(temp_dir / 'ray-start.log').read_text()[-2000:]}")
        try:
            request = urllib.request.Request(f"{head.dashboard_url}/api/version",
                                             headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
            urllib.request.urlopen(request, timeout=2).read()
            return head
        except OSError:
            time.sleep(0.5)
    head.stop()
    raise RuntimeError(f"the dashboard at {head.dashboard_url} did not answer within {timeout_s} s")


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    return children


def _descendants(pid: int) -> set[int]:
    children, found, todo = _children_by_parent(), set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _cmdline_mentions(text: str) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.add(int(entry))
            except OSError:
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (for tests that kill a driver and then clean up after it)."""
    return _descendants(pid)


def kill_pids(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def helpers_importable_by_workers():
    """Put ``tests/`` on ``PYTHONPATH`` while a Ray starts: its worker processes inherit it,
    so Ray Train workers can import ``helpers.user_models``."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), saved]))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
