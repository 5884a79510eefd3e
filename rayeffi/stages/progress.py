"""One line per epoch per stage on the driver, instead of Ray's log flood.

Rank 0 of each stage puts its epoch metrics on a Ray queue (a run without Ray: an
in-process ``queue.Queue``, ``in_process=True``); a driver thread prints
them as they arrive and keeps the history (one entry per epoch, the last report of
an epoch winning if a restarted worker group repeats it). Rank 0 also announces each
start of a worker group with the epoch it starts from, so the driver can tell a
restart (Ray Train's ``FailureConfig``) from the first start. With ``log_path`` every
message is appended to a JSON-lines file as well, which outlives a killed driver
(``rayeffi run --resume`` reads it back). Progress within an epoch is shown by
``stages/live.py`` and never logged. A validation within an epoch (``eval_every_steps``)
arrives as an ``eval`` event: printed, logged and kept apart from the epochs (``evals``,
one per global step), so the history, its health checks and the trackers see epochs only.
With ``on_epoch`` each epoch's metrics also go
to a callback on the driver (``rayeffi.tracking``: TensorBoard, MLflow), keyed by the
message's ``stage`` (``STAGE`` or ``STAGE/TRIAL_ID``).
"""

from __future__ import annotations

import _thread
import json
import queue as std_queue
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from rayeffi.task import headline_metrics
from rayeffi.health import HealthStop, check_health
from rayeffi.stages.live import LiveProgress


class Progress:
    def __init__(
        self,
        echo: Callable[[str], None] = print,
        log_path: str | Path | None = None,
        on_epoch: Callable[[str, dict], None] | None = None,
        live: LiveProgress | None = None,
        in_process: bool = False,
        on_step: Callable[[str, dict], None] | None = None,
    ):
        self.queue = std_queue.Queue() if in_process else _ray_queue()
        """Where rank 0 puts its messages: a Ray queue (an actor), or in process a ``queue.Queue``."""
        self.live = live
        """Shows the workers' progress within an epoch (None: epoch lines only)."""
        self.echo = echo
        self.on_epoch = on_epoch
        self.on_step = on_step
        """Receives the per-step scalars (``log_every_steps``): never printed or kept."""
        self.log_path = Path(log_path) if log_path is not None else None
        self.history: dict[str, dict[int, dict]] = {}
        self.evals: dict[str, dict[int, dict]] = {}
        """Per stage, the validations within epochs by global step (a repeated step: the last wins)."""
        self.starts: dict[str, list[int]] = {}
        """Per stage, the epoch each worker-group start began from (one entry per start)."""
        self.devices: dict[str, list[dict]] = {}
        """Per stage, each worker's device at the latest start (``rayeffi.device.DeviceChoice.summary``)."""
        self._lock = threading.Lock()  # no message is ever in flight outside it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                try:
                    self._record(self.queue.get(timeout=0.2))
                except _empty_errors():
                    continue
                except Exception:  # the queue actor is gone: the run is shutting down
                    return

    def _record(self, message: dict) -> None:
        if message.get("event") == "step":  # per-step scalars: to the trackers only
            if self.on_step is not None:
                self.on_step(message.pop("stage"), message)
            return
        if message.get("event") == "progress":  # within an epoch: shown, never logged or kept
            if self.live is not None:
                self.live.update(message.pop("stage"), message, time.monotonic())
            return
        if self.live is not None:
            self.live.clear()
        # kept for the run's record: each message arrives with its own copy of every key (Ray
        # unpickles it); shared keys halve what an epoch costs the driver (~1 KB -> ~0.5 KB)
        message = {sys.intern(key) if type(key) is str else key: value for key, value in message.items()}
        if self.log_path is not None:
            with self.log_path.open("a") as log:
                log.write(json.dumps(message) + "\n")
        stage = message.pop("stage")
        if message.get("event") == "start":
            starts = self.starts.setdefault(stage, [])
            starts.append(int(message["from_epoch"]))
            self._record_devices(stage, message.get("devices") or [])
            if len(starts) > 1:
                within = f", step {message['from_step']} of the next" if message.get("from_step") else ""
                self.echo(f"[{stage}] worker group restarted from the checkpoint of epoch {starts[-1]}{within}")
            return
        if message.get("event") == "compile":
            self.echo(f"[{stage}] compile: the first step took {message['seconds']:.1f} s (torch.compile built the "
                      "forward and backward graphs; the next steps reuse them)")
            return
        if message.pop("event", None) == "eval":
            self.evals.setdefault(stage, {})[int(message["step"])] = message
            self.echo(format_eval_line(stage, message))
            return
        self.history.setdefault(stage, {})[int(message["epoch"])] = message
        self.echo(format_epoch_line(stage, message))
        stop_if_unhealthy(stage, self.stage_history(stage))
        if self.on_epoch is not None:
            self.on_epoch(stage, message)

    def _record_devices(self, stage: str, devices: list[dict]) -> None:
        if devices and devices != self.devices.get(stage):
            fallbacks = [d["note"] for d in devices if d["note"] != d["device"]]
            if fallbacks:  # GPUs were assigned but could not be used: say so once
                self.echo(f"[{stage}] {fallbacks[0]} (worker GPU ids: {[d['gpu_ids'] for d in devices]})")
        self.devices[stage] = devices

    def seed(self, stage: str, history: list[dict], evals: list[dict] = ()) -> None:
        """Epochs and validations within them an earlier driver saw (``--resume``), so the stage's
        history stays whole."""
        with self._lock:
            for message in history:
                self.history.setdefault(stage, {})[int(message["epoch"])] = dict(message)
            for message in evals:
                self.evals.setdefault(stage, {})[int(message["step"])] = dict(message)

    def restarts(self, stage: str) -> list[dict]:
        """``[{"from_epoch": N}, ...]``: one per restart of the stage's worker group."""
        return [{"from_epoch": epoch} for epoch in self.starts.get(stage, [])[1:]]

    def drain(self) -> None:
        """Print whatever is still queued (call after a stage's ``fit`` returns)."""
        with self._lock:
            while True:
                try:
                    self._record(self.queue.get_nowait())
                except _empty_errors():
                    return

    def stage_history(self, stage: str) -> list[dict]:
        return [self.history.get(stage, {})[epoch] for epoch in sorted(self.history.get(stage, {}))]

    def stage_evals(self, stage: str) -> list[dict]:
        """The stage's validations within epochs, by global step."""
        evals = self.evals.get(stage, {})
        return [evals[step] for step in sorted(evals)]

    def close(self) -> None:
        """Stop the printer thread; a Ray queue's actor is killed. The driver does not count on the
        last handle going out of scope: Tune keeps what a tuned stage hands its trials (the
        queue among it) for the life of the process (``stages/tune.py``), so a driver running
        one recipe after another gained an actor process, and a socket to it, per run."""
        self._stop.set()
        self._thread.join(timeout=2)
        if not isinstance(self.queue, std_queue.Queue):
            self.queue.shutdown(force=True)  # nothing is put after the stages: no grace period to wait for


def _ray_queue():
    """The queue's actor on the driver's own node: placed elsewhere, a node that leaves would
    take the run's record with it (every later report fails), while the driver lives on."""
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})


def _empty_errors() -> tuple[type[Exception], ...]:
    """What an empty queue raises: ``queue.Empty``, and Ray's own once a Ray queue exists."""
    ray_queue = sys.modules.get("ray.util.queue")  # loaded by _ray_queue; never imported here
    return (std_queue.Empty, ray_queue.Empty) if ray_queue is not None else (std_queue.Empty,)


def stop_if_unhealthy(stage: str, history: list[dict]) -> None:
    """Stop the run (as Ctrl-C would) when the stage has diverged; the command line prints why.

    Tune trials (``stage/trial``) are left to run: a diverged trial is judged with the
    stage's trials, not allowed to stop the others.
    """
    if "/" in stage:
        return
    reason = check_health(history)
    if reason and HealthStop.report(f"stages.{stage}: {reason}"):
        _thread.interrupt_main()  # the driver's main thread waits in fit(): stop it there


def format_eval_line(stage: str, metrics: dict) -> str:
    figures = "".join(f"  {key} {value:.4f}" for key, value in headline_metrics(metrics).items())
    return f"[{stage}] step {metrics['step']} (epoch {metrics['epoch']:.2f}): val_loss {metrics['val_loss']:.4f}{figures}"


def format_epoch_line(stage: str, metrics: dict) -> str:
    line = (
        f"[{stage}] epoch {int(metrics['epoch'])}: train_loss {metrics['train_loss']:.4f}  "
        f"val_loss {metrics['val_loss']:.4f}  "
        + "".join(f"{key} {value:.4f}  " for key, value in headline_metrics(metrics).items())  # the task's figures
        + f"{metrics['samples_per_s']:.0f} samples/s"
        + (f"  {metrics['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in metrics else "")
        + (f"  loss_scale {metrics['loss_scale']:g}  skipped {int(metrics['skipped_steps'])}"
           if "loss_scale" in metrics else "")  # mixed precision telemetry
    )
    if "dsd_phase" in metrics:
        line += f"  [{metrics['dsd_phase']} r{metrics['dsd_round']}, sparsity {metrics['sparsity']:.3f}]"
    if "kd_soft_loss" in metrics and "kd_ce_loss" in metrics:  # distillation's two terms
        line += f"  [kd {metrics['kd_soft_loss']:.4f}, ce {metrics['kd_ce_loss']:.4f}]"
    if metrics.get("warning"):
        line += f"  WARNING: {metrics['warning']}"
    if "staleness_max" in metrics:  # parameter server
        line += f"  [{metrics['server_updates']:.0f} server updates, staleness max {metrics['staleness_max']}]"
    return line
