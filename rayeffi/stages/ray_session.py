"""Starting (or joining) the Ray cluster a run uses, quietly."""

from __future__ import annotations

import logging
import os

import ray

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def start_ray(address: str | None, num_cpus_needed: float) -> bool:
    """Join ``address`` or start a private local Ray; return True if this call started it.

    A private Ray binds its dashboard to 127.0.0.1 and gets at least one logical CPU
    more than the workers reserve, so Ray Data tasks are never starved by the workers.
    """
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return False
    common = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address:
        ray.init(address=address, **common)
    else:
        num_cpus = max(os.cpu_count() or 1, int(num_cpus_needed + 0.999) + 1)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **common)
    _quiet_ray_data()
    return True


def _quiet_ray_data() -> None:
    from ray.data import DataContext

    for name in ("ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
