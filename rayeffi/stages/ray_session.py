"""Starting (or joining) the Ray cluster a run uses, quietly.

Ray is imported by :func:`start_ray`, not by this module: a run whose stages all run in
process (``stages/local_run.py``) checks its address here without importing Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys

from rayeffi.errors import UserError
from rayeffi.recipe.paths import worker_python_path

TRIAL_RESOURCE = "rayeffi_trial_driver"

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Tune's own SIGINT handler ends the experiment quietly and returns the unfinished
    # trials as results, so a tuned stage interrupted by Ctrl-C would pick a "best" trial
    # and go on; without it the driver's handler (cli.py) stops the run, exit 130
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
}

RAY_JOB_ENV = {
    # The Train V2 controller polls its workers at this interval and every
    # ray.train.report waits for the next poll: the 2 s default cost 2 s per epoch
    # (16 of the quickstart's 36 s); 0.25 s keeps the overhead under 10%.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}

PRIVATE_RAY_ENV = {
    # The GCS keeps a record of every task for the dashboard and `ray list tasks`, up to
    # this many (Ray's default: 100,000; ray_config_def.h, task_events_max_num_task_in_gcs).
    # The Train controller's polls above are tasks (eight a second for two workers), and
    # so is each wait of the progress queue: with the default, a long run grew
    # a private Ray's GCS by ~400 MiB an hour; 2,000 is reached in a run's first minutes
    # and keeps the last few minutes' tasks (docs/benchmarks.md, soak).
    "RAY_task_events_max_num_task_in_gcs": "2000",
    # Past that cap, the GCS remembers the id of every task record it dropped, for the
    # count of dropped tasks, up to this many per job (Ray's default: 1,000,000;
    # gcs_task_manager.cc, GcOldDroppedTaskAttempts, which keeps the count when it
    # forgets the ids). With the default, the capped GCS still grew ~40 MiB an hour.
    "RAY_task_events_max_dropped_task_attempts_tracked_per_job_in_gcs": "10000",
}


def start_ray(address: str | None, num_cpus_needed: float, num_gpus: int | None = None,
              import_paths: tuple[str, ...] = ()) -> bool:
    """Join ``address`` or start a private local Ray; return True if this call started it.

    A private Ray listens on 127.0.0.1 only (dashboard, GCS, raylet, workers, agents),
    gets at least one logical CPU more than the workers reserve, so Ray Data tasks are
    never starved by the workers, and is watched by ``rayeffi/driver/supervise.py``, so a
    driver killed with SIGKILL leaves none of its processes behind.
    ``num_gpus``: a private Ray's GPU count (default: the GPUs Ray detects; tests declare
    logical GPUs on machines without CUDA).
    ``import_paths``: folders every worker of the job imports from (the recipe's folder and the
    current one: ``recipe/paths.py``), private or joined; a Ray this process had already
    started keeps the environment it was started with.
    """
    import ray

    _default_env(QUIET_ENV)
    if ray.is_initialized():
        return False
    _default_env(RAY_JOB_ENV)  # inherited by a private Ray's processes
    job_env = {key: os.environ[key] for key in RAY_JOB_ENV}
    if import_paths:
        job_env["PYTHONPATH"] = worker_python_path(import_paths)
    common = {"log_to_driver": False, "logging_level": logging.ERROR, "runtime_env": {"env_vars": job_env}}
    if address:
        # a loopback address is joined as given: Ray replaces 127.0.0.1 by this machine's network
        # address unless its single-machine switch is on, and a loopback-only head is not there
        with loopback_only() if _is_loopback_address(address) else contextlib.nullcontext():
            try:
                ray.init(address=address, **common)
            except ConnectionError as exc:  # Ray retried for ~25 s
                raise UserError(f"--address {address}: Ray could not join the cluster ({exc}); check that the "
                                f"address is the head's GCS (6379 by default) and, with token authentication, "
                                f"{AUTH_HELP}") from None
    else:
        num_cpus = max(os.cpu_count() or 1, int(num_cpus_needed + 0.999) + 1)
        interface = loopback_interface()
        if interface and "GLOO_SOCKET_IFNAME" not in os.environ:  # gloo's pairs listen on loopback too
            common["runtime_env"]["env_vars"]["GLOO_SOCKET_IFNAME"] = interface
        _ensure_watchdog()
        _default_env(PRIVATE_RAY_ENV)  # read by the GCS this call starts
        with loopback_only():
            ray.init(
                address="local",
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                resources={TRIAL_RESOURCE: 64},  # Tune trials hold this instead of a CPU (stages/tune.py)
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                **common,
            )
    _quiet_ray_data()
    return True


def _default_env(values: dict[str, str]) -> None:
    """Set each variable that the environment does not already set (the user's value wins)."""
    for key, value in values.items():
        os.environ.setdefault(key, value)


def ray_is_initialized() -> bool:
    """Whether this process has joined a Ray, without importing Ray (not imported: not joined)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


LOOPBACK_IP = "127.0.0.1"


def _is_loopback_address(address: str) -> bool:
    """``127.x.y.z:PORT`` or ``localhost:PORT`` (a ``ray://`` or ``auto`` address is not)."""
    host = address.rpartition(":")[0]
    return host == "localhost" or host.startswith("127.")


def loopback_interface() -> str | None:
    """The name of this machine's loopback interface (``lo`` on Linux, ``lo0`` on macOS), if any."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((name for name in names if name.startswith("lo")), None)


LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Ray's own switch for a single-machine Ray: with it off, the node's address is
127.0.0.1, and the GCS, the raylet, the workers and both agents listen on loopback
only (with the machine's address they listen on every interface)."""


@contextlib.contextmanager
def loopback_only():
    """Start a private Ray (or, in tests and ``bench scaling``, a ``ray.cluster_utils.Cluster``'s
    nodes, each also given ``node_ip_address=LOOPBACK_IP``) on 127.0.0.1; the driver's
    environment is restored afterwards.

    Ray's processes copy the environment when they start, so they keep the setting;
    restoring it keeps a later ``ray.init(address=...)`` in this process unaffected.
    """
    from ray._private import ray_constants

    saved_env = {key: os.environ.get(key) for key in LOOPBACK_ENV}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(LOOPBACK_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import time: the driver needs it set here too
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_WATCHDOG = None


def _ensure_watchdog() -> None:
    """One watchdog per driver process: it removes the private Ray's processes if the driver is killed."""
    global _WATCHDOG
    if _WATCHDOG is None or _WATCHDOG.poll() is not None:
        from rayeffi.driver.supervise import start_watchdog

        _WATCHDOG = start_watchdog()


def _quiet_ray_data() -> None:
    from ray.data import DataContext

    for name in ("ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def check_address(address: str | None) -> None:
    """Fail at once on a ``HOST:PORT`` where nothing listens: ``ray.init`` retries for minutes."""
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: give auto, or HOST:PORT of the head's GCS (port 6379 by default)")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise UserError(
            f"--address {address}: nothing answers there ({exc.strerror or exc}); give auto on a node of the "
            "cluster, or the head's HOST:PORT (the GCS, 6379 by default), and check the cluster is up"
        ) from None
    check_token(address)


AUTH_HELP = ("export RAY_AUTH_MODE=token and the cluster's token as RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH=FILE "
             "holding it (the head's ~/.ray/auth_token unless it was started with its own)")


def check_token(address: str) -> None:
    """Fail at once, in one line, where the GCS at ``address`` refuses this client's token (or its
    lack of one): ``ray.init`` retries for ~25 s, logging the refusal every second, then raises a
    bare ``ConnectionError``. The token itself is never printed."""
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    with _stderr_silenced():  # Ray's C++ client logs the refusal on fd 2 as well
        try:
            GcsClient(address=address)
            return
        except AuthenticationError:
            pass
        except Exception:  # anything else is ray.init's to report
            return
    raise UserError(f"--address {address}: the cluster {_what_was_refused()}; {AUTH_HELP}")


def _what_was_refused() -> str:
    """Which token the cluster refused: where it came from, never the token itself."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    if not is_token_auth_enabled():
        return "asks for a token and this client sent none (RAY_AUTH_MODE is not token here)"
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "refused the token in RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"refused the token in RAY_AUTH_TOKEN_PATH ({os.environ['RAY_AUTH_TOKEN_PATH']})"
    return "refused this client's token (from ~/.ray/auth_token, if it exists)"


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 to /dev/null for the block (what C++ libraries write there included)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
