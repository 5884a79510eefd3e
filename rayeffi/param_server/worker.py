"""One gradient worker (a Ray actor): a model replica, its data shard, the step.

Downpour SGD's client (Dean et al. 2012, Algorithm 7.1), one step at a time::

    if step % n_fetch == 0:  parameters <- pull from every shard
    gradient <- the step on the next minibatch        (worker/step.py: train_step)
    accrued  <- accrued + gradient;  parameters <- parameters - lr * gradient
    if step % n_push == 0:   push accrued to every shard (then pull: fetch_every | push_every)

The epoch is the Ray Train loop's own (``worker/epoch.py: train_epoch``, with
:class:`DownpourHooks` for the pulls and pushes), and so is the step (``train_step``): the
precision policy (autocast, loss scaling, overflow skip), the techniques (distillation loss,
DSD gradient masks) and the health check (a non-finite loss stops the stage) act exactly
as under data parallelism. Its optimizer is a :class:`PushOptimizer`, whose ``step``
accrues the (unscaled, FP32) gradients and makes Dean's local update.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import ray
import torch

from rayeffi.checkpoint import checkpoint_state, rng_state, save_atomic
from rayeffi.data.info import DatasetInfo
from rayeffi.parallel.base import Strategy
from rayeffi.param_server.calls import get_all
from rayeffi.param_server.plan import shard_plan
from rayeffi.param_server.wire import encode_gradients
from rayeffi.recipe.models import StageConfig
from rayeffi.device import choose_device
from rayeffi.worker.build import build_worker
from rayeffi.worker.epoch import EpochHooks, evaluate, finish_metrics, stage_batches, train_epoch
from rayeffi.worker.loop import row_augment


class PushOptimizer(torch.optim.SGD):
    """Plain SGD for the local update, which also adds every gradient it applies to ``accrued``."""

    def __init__(self, params, lr: float, local_update: bool = True):
        super().__init__(params, lr=lr)
        self.local_update = local_update
        self.accrued: dict[torch.Tensor, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    accrued = self.accrued.get(param)
                    self.accrued[param] = param.grad.detach().clone() if accrued is None else accrued.add_(param.grad)
        # the local update only matters between fetches: a pull after every step overwrites it
        return super().step(closure) if self.local_update else None

    def take_accrued(self) -> dict[torch.Tensor, torch.Tensor]:
        accrued, self.accrued = self.accrued, {}
        return accrued


@dataclass(frozen=True)
class GradientWorkerSpec:
    stage: StageConfig
    info: DatasetInfo
    index: int
    init_checkpoint: str | None = None


class GradientWorker:
    def __init__(self, spec: GradientWorkerSpec, servers: list, train_shard, val_shard):
        torch.set_num_threads(1)
        stage = spec.stage
        self.spec, self.stage, self.config = spec, stage, stage.parallel
        self.servers = servers
        # the same build as a Ray Train worker (the shards start from the same weights), with a
        # single-process strategy and an optimizer that accrues gradients for the shards
        make_optimizer = lambda model: PushOptimizer(  # noqa: E731
            model.parameters(), lr=stage.optimizer.lr, local_update=self.config.fetch_every > 1)
        device = choose_device(stage.scaling.use_gpu).device  # the actor's GPU (num_gpus), or the CPU
        self.parts, self.scheduler = build_worker(stage, spec.info, Strategy(device=device), spec.init_checkpoint,
                                                  make_optimizer)
        self.optimizer, self.precision, self.techniques = self.parts.optimizer, self.parts.precision, self.parts.techniques
        self.params = dict(self.parts.model.named_parameters())
        self.plan = shard_plan({n: p.numel() for n, p in self.params.items()}, self.config.num_servers)
        self.wire_dtype = self.config.resolved_gradient_dtype(stage.precision.policy)
        self.versions = [0] * len(servers)
        self.epoch = -1
        # the stage's DataLayout, as a Ray Train worker reads it: the shard in memory once
        # read, if it is small (Ray Data costs milliseconds per batch)
        self.train = stage_batches(train_shard, "train", stage, spec.info, stage.scaling.num_workers)
        self.val = stage_batches(val_shard, "val", stage, spec.info, stage.scaling.num_workers)
        self.augment = row_augment(stage, spec.info, spec.index)  # data.augment, or None
        torch.manual_seed(stage.seed + 1 + spec.index)  # dropout differs per worker

    # -- talking to the shards --------------------------------------------------------

    def _load(self, replies) -> None:
        with torch.no_grad():
            for shard, (version, weights) in enumerate(replies):
                self.versions[shard] = version
                for name, value in weights.items():
                    self.params[name].copy_(torch.from_numpy(value))  # FP32 from the shard

    def _pull(self, min_version: int = 0, register: bool = True) -> None:
        index = self.spec.index
        self._load(get_all([lambda s=s: s.pull.remote(index, min_version, register) for s in self.servers]))

    def _push(self, round_: int | None, pull: bool) -> None:
        accrued = {name: self.optimizer.accrued.get(param) for name, param in self.params.items()}
        self.optimizer.take_accrued()
        grads = {name: g if g is not None else torch.zeros_like(self.params[name], dtype=torch.float32)
                 for name, g in accrued.items()}  # an overflow-skipped step still answers its sync round
        calls = []
        for shard, names in enumerate(self.plan):
            encoded = encode_gradients({name: grads[name] for name in names}, self.wire_dtype)
            tag = round_ if round_ is not None else self.versions[shard]
            calls.append(lambda s=self.servers[shard], t=tag, e=encoded: s.push.remote(self.spec.index, t, e, pull))
        replies = get_all(calls)  # sync point: every shard has applied (async) or collected (sync) it
        if pull:
            self._load(replies)

    # -- the epoch, driven by the stage runner ----------------------------------------

    def start_epoch(self, epoch: int) -> float:
        """Fresh weights, then the techniques' epoch start (DSD chooses its masks from them)."""
        self._pull(register=False)
        if epoch > self.epoch:
            for technique in self.techniques:
                technique.on_epoch_start(epoch, self.parts.model, self.optimizer)
            while self.scheduler.last_epoch < epoch:
                self.scheduler.step()
            self.epoch = epoch
        return self.optimizer.param_groups[0]["lr"]

    def publish_settings(self) -> None:
        """Worker 0: send the epoch's lr and every technique's masks to the shards."""
        masks: dict[str, torch.Tensor] = {}
        for technique in self.techniques:
            masks.update({name: mask.cpu() for name, mask in (getattr(technique, "masks", None) or {}).items()})
        lr = self.optimizer.param_groups[0]["lr"]
        get_all([lambda s=server: s.set_epoch_settings.remote(lr, masks or None) for server in self.servers])

    def run_epoch(self, epoch: int, start_version: int, skip: int = 0) -> list[float]:
        """Train on this worker's shard (``worker/epoch.py``, the Ray Train loop's own epoch);
        ``skip`` batches already done (a replaced worker). ``[loss_sum, rows, scored, seconds]``."""
        if epoch != self.epoch:
            self.start_epoch(epoch)
        hooks = DownpourHooks(self, start_version, skip)
        sums, seconds = train_epoch(self.parts, self.train, self.stage, epoch, hooks=hooks, augment=self.augment)
        if epoch + 1 < self.stage.total_epochs:
            self.train.read_ahead()  # a streamed shard's next epoch starts while the others finish theirs
        return [*sums.tolist(), seconds]

    def evaluate(self) -> list[float]:
        """``evaluate``'s sums over this worker's validation shard, on the latest weights."""
        self._pull(register=False)
        return evaluate(self.parts, self.val, self.augment).tolist()

    def finish_metrics(self, sums: list[float], train_s: float, epoch: int, lr: float) -> dict[str, Any]:
        """Worker 0: the epoch's metrics from every worker's summed figures, as a Ray Train worker
        makes them (this worker's task names the user metrics; its techniques and policy add theirs)."""
        return finish_metrics(self.parts, sums, train_s=train_s, epoch=epoch, lr=lr,
                              num_classes=self.spec.info.num_classes)

    def was_restarted(self) -> bool:
        """True in a process Ray started again after this worker died."""
        return ray.get_runtime_context().was_current_actor_reconstructed

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def pid(self) -> int:
        return os.getpid()

    def rng_state(self) -> dict[str, Any]:
        return rng_state()

    def write_checkpoint(self, path: str, epoch: int, metrics: dict[str, Any], others: list) -> str:
        """Worker 0: the stage checkpoint, in the data-parallel format, from the shards' states."""
        shard_states = get_all([lambda s=server: s.state.remote() for server in self.servers])
        self._pull(register=False)
        training = self.parts.strategy.training_state(self.parts)
        training["optimizer"] = {"shards": [{"names": s["names"], **s["optimizer"]} for s in shard_states]}
        state = checkpoint_state(
            epoch=epoch, training=training, scheduler=self.scheduler.state_dict(),
            rng=[rng_state(), *ray.get([worker.rng_state.remote() for worker in others])], metrics=metrics,
            param_server={"versions": [s["version"] for s in shard_states], "plan": self.plan,
                          "staleness": [s["staleness"] for s in shard_states]},
        )
        return str(save_atomic(state, path))


class DownpourHooks(EpochHooks):
    """Downpour SGD around each step (Dean et al. 2012, Algorithm 7.1): pull before the first
    step and at each fetch inside a push span; push the accrued gradients every ``push_every``
    steps and at the last (the push's reply carries the next step's weights). Sync mode tags
    step t with round ``start_version + t``."""

    def __init__(self, worker: GradientWorker, start_version: int, batches_done: int):
        self.worker, self.config, self.start_version = worker, worker.config, start_version
        self.batches_done = batches_done

    def _round(self, step: int) -> int | None:
        return self.start_version + step if self.config.mode == "sync" else None

    def before_step(self, step: int) -> None:
        config = self.config
        if step == self.batches_done or (
                config.mode == "async" and step % config.push_every and step % config.fetch_every == 0):
            self.worker._pull(min_version=self._round(step) or 0)  # first step, or a fetch inside a push span

    def after_step(self, step: int, last: bool) -> None:
        if (step + 1) % self.config.push_every == 0 or last:
            self.worker._push(self._round(step), pull=not last)  # the reply carries the next step's weights
