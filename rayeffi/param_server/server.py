"""One parameter-server shard (a Ray async actor): FP32 weights, optimizer state, updates.

Dean et al. 2012: "each parameter server shard acts independently" and applies the
updates of its own parameters. ``async`` applies each push when it arrives (Downpour
SGD), behind the :class:`StalenessGate`; ``sync`` collects one gradient per worker
for the current round, averages them in worker order (so the result is the gradient
of the global batch) and applies one update.

The shard writes its state to ``checkpoint_path`` every ``checkpoint_every`` updates
and at every epoch end. Ray restarts a dead shard (``max_restarts``) by running the
constructor again, which resumes from that file; calls in flight are retried on the
new process (``max_task_retries``), so workers only see a slower step.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayeffi.data.info import DatasetInfo
from rayeffi.param_server.plan import shard_plan
from rayeffi.param_server.staleness import StalenessGate
from rayeffi.param_server.wire import decode_gradients, to_wire
from rayeffi.recipe.models import StageConfig
from rayeffi.techniques.dsd.sparsity import apply_masks, mask_optimizer_state
from rayeffi.checkpoint import save_atomic
from rayeffi.worker.build import initial_model


@dataclass(frozen=True)
class ServerSpec:
    stage: StageConfig
    info: DatasetInfo
    shard_index: int
    checkpoint_path: str
    init_checkpoint: str | None = None


def initial_parameters(stage: StageConfig, info: DatasetInfo, init_checkpoint: str | None) -> dict[str, torch.Tensor]:
    """The model's starting parameters, exactly as every worker builds them (``worker/build.py``)."""
    model = initial_model(stage, info, init_checkpoint)
    return {name: param.detach().float().clone() for name, param in model.named_parameters()}


def server_optimizer(stage: StageConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    config, optimizer = stage.parallel, stage.optimizer
    kind = config.resolved_server_optimizer(optimizer.momentum)
    if kind == "adagrad":
        return torch.optim.Adagrad(params, lr=optimizer.lr, weight_decay=optimizer.weight_decay)
    momentum = optimizer.momentum if kind == "momentum" else 0.0
    return torch.optim.SGD(params, lr=optimizer.lr, momentum=momentum,
                           nesterov=optimizer.nesterov and momentum > 0, weight_decay=optimizer.weight_decay)


class ServerShard:
    def __init__(self, spec: ServerSpec):
        torch.set_num_threads(1)
        stage = spec.stage
        self.spec, self.config = spec, stage.parallel
        self.num_workers = stage.scaling.num_workers
        full = initial_parameters(stage, spec.info, spec.init_checkpoint)
        self.names = shard_plan({n: p.numel() for n, p in full.items()}, self.config.num_servers)[spec.shard_index]
        self.params = {name: torch.nn.Parameter(full[name]) for name in self.names}
        self.optimizer = server_optimizer(stage, list(self.params.values()))
        self.masks: dict[str, torch.Tensor] | None = None
        self.version = 0
        self.gate = StalenessGate(self.config.max_staleness)
        self.pending: dict[int, dict[str, torch.Tensor]] = {}  # sync: this round's gradients by worker
        self.pushes: Counter[int] = Counter()
        self.staleness: Counter[int] = Counter()  # since the last epoch_stats()
        self.total_staleness: Counter[int] = Counter()
        self.restored = 0
        self.changed = asyncio.Condition()
        if Path(spec.checkpoint_path).is_file():
            self._restore(torch.load(spec.checkpoint_path, map_location="cpu", weights_only=True))

    # -- pulls and pushes -------------------------------------------------------------

    async def pull(self, worker: int, min_version: int = 0, register: bool = True) -> tuple[int, dict[str, torch.Tensor]]:
        """Current weights (waiting until ``version >= min_version``: sync rounds)."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.version >= min_version)
            if register and self.config.mode == "async":
                self.gate.on_pull(worker, self.version)
            return self.version, self._weights()

    async def push(self, worker: int, tag: int, encoded: dict, pull: bool) -> tuple[int, dict[str, torch.Tensor]] | None:
        """Apply (async) or collect (sync) one worker's gradients; with ``pull``, return fresh weights.

        ``tag``: async, the version the worker's gradient is based on; sync, the round.
        """
        grads = decode_gradients(encoded)  # FP32 from here on
        async with self.changed:
            if self.config.mode == "async":
                await self.changed.wait_for(lambda: self.gate.can_apply(worker, self.version))
                self._record(self.gate.on_apply(worker, self.version, tag))
                self._apply(grads)
                self.pushes[worker] += 1
            else:
                self._collect(worker, tag, grads)
            self.changed.notify_all()
            if not pull:
                return None
            if self.config.mode == "sync":
                await self.changed.wait_for(lambda: self.version > tag)  # sync point: the round is complete
            else:
                self.gate.on_pull(worker, self.version)
            return self.version, self._weights()

    def _collect(self, worker: int, round_: int, grads: dict[str, torch.Tensor]) -> None:
        if round_ < self.version:
            return  # a replacement worker replaying a round this shard already applied
        if round_ > self.version:  # restored from an older checkpoint: the lost rounds are gone
            self.version, self.pending = round_, {}
        self.pending[worker] = grads
        self.pushes[worker] += 1
        if len(self.pending) == self.num_workers:
            ordered = [self.pending[w] for w in sorted(self.pending)]  # fixed order: deterministic sums
            self._apply({name: torch.stack([g[name] for g in ordered]).mean(0) for name in self.names})
            for _ in ordered:
                self._record(0)
            self.pending = {}

    @torch.no_grad()
    def _apply(self, grads: dict[str, torch.Tensor]) -> None:
        for name, param in self.params.items():
            grad = grads[name]
            param.grad = grad * self.masks[name] if self.masks and name in self.masks else grad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.masks:
            apply_masks(self.params, self.masks)  # momentum must not move pruned weights off zero
        self.version += 1
        if self.version % self.config.checkpoint_every == 0:
            self.checkpoint()

    def _record(self, staleness: int) -> None:
        self.staleness[staleness] += 1
        self.total_staleness[staleness] += 1

    def _weights(self) -> dict[str, np.ndarray]:
        return {name: to_wire(param.detach().clone()) for name, param in self.params.items()}

    # -- epoch boundaries (no pushes in flight) ---------------------------------------

    def set_epoch_settings(self, lr: float, masks: dict[str, torch.Tensor] | None) -> None:
        """The epoch's learning rate (schedule x techniques' factors) and this shard's masks."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.masks = {name: masks[name] for name in self.names if name in masks} if masks else None
        if self.masks:
            apply_masks(self.params, self.masks)
            mask_optimizer_state(self.optimizer, self.params, self.masks)

    def forget(self, worker: int) -> None:
        self.gate.forget(worker)

    def progress(self) -> dict[str, Any]:
        return {"version": self.version, "pushes": dict(self.pushes)}

    def epoch_stats(self) -> dict[str, Any]:
        stats = {"version": self.version, "staleness": dict(self.staleness), "restored": self.restored}
        self.staleness, self.restored = Counter(), 0
        return stats

    def state(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "params": {name: param.detach().clone() for name, param in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "version": self.version,
            "pushes": dict(self.pushes),
            "staleness": dict(self.total_staleness),
            "masks": self.masks,
        }

    def checkpoint(self) -> None:
        save_atomic(self.state(), self.spec.checkpoint_path)

    def _restore(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, value in state["params"].items():
                self.params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = state["version"]
        self.pushes = Counter(state["pushes"])
        self.total_staleness = Counter(state["staleness"])
        self.masks = state["masks"]
        self.restored = 1

    def pid(self) -> int:
        return os.getpid()
