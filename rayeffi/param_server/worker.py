"""One gradient worker (a Ray actor): a model replica, its data shard, the step.

Downpour SGD's client (Dean et al. 2012, Algorithm 7.1), one step at a time::

    if step % n_fetch == 0:  parameters <- pull from every shard
    gradient <- the step on the next minibatch        (worker/step.py: train_step)
    accrued  <- accrued + gradient;  parameters <- parameters - lr * gradient
    if step % n_push == 0:   push accrued to every shard (then pull: fetch_every | push_every)

The step is rayeffi's own ``train_step``: the precision policy (autocast, loss scaling,
overflow skip) and the techniques (distillation loss, DSD gradient masks) act exactly
as under data parallelism. Its optimizer is a :class:`PushOptimizer`, whose ``step``
accrues the (unscaled, FP32) gradients and makes Dean's local update.
"""

from __future__ import annotations

import os
import time
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
from rayeffi.device import choose_device, to_device
from rayeffi.worker.build import build_worker
from rayeffi.worker.loop import row_augment
from rayeffi.worker.batches import ShardBatches
from rayeffi.worker.step import eval_step, train_step


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
        self.servers, self.train_shard, self.val_shard = servers, train_shard, val_shard
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
        self.batch_size = stage.data.batch_size // stage.scaling.num_workers
        # the shard in memory once read, if it is small (Ray Data costs milliseconds per batch)
        self.batches = ShardBatches(train_shard, self.batch_size, train_shard.size_bytes(), stage.data.in_memory_bytes)
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

    def run_epoch(self, epoch: int, start_version: int, skip: int = 0) -> dict[str, float]:
        """Train on this worker's shard; ``skip`` batches already done (a replaced worker)."""
        if epoch != self.epoch:
            self.start_epoch(epoch)
        config, model = self.config, self.parts.model
        model.train()
        num_batches = -(-self.train_shard.count() // self.batch_size)
        loss_sum, rows, scored, steps = 0.0, 0, 0, 0
        start = time.perf_counter()
        if self.augment is not None:
            self.augment.start_epoch(epoch)
        for step, batch in enumerate(self._train_batches(epoch)):
            if step < skip:
                continue
            round_ = start_version + step if config.mode == "sync" else None
            if step == skip or (config.mode == "async" and step % config.push_every and step % config.fetch_every == 0):
                self._pull(min_version=round_ or 0)  # first step, or a fetch inside a push span
            inputs, targets, extras = self._on_device(batch)
            if self.augment is not None:
                inputs = self.augment.train(inputs)
            loss = train_step(self.parts, inputs, targets, extras)
            loss_sum += loss.item() * len(targets)
            rows += len(targets)
            scored += int(self.parts.task.count(targets))
            steps += 1
            last = step == num_batches - 1
            if (step + 1) % config.push_every == 0 or last:
                self._push(round_, pull=not last)  # the reply carries the next step's weights
        return {"loss_sum": loss_sum, "rows": rows, "scored": scored, "seconds": time.perf_counter() - start,
                "steps": steps}

    def _train_batches(self, epoch: int):
        """This epoch's batches (``worker/batches.py``: in memory when the shard is small, with the
        same seed for a replaced worker)."""
        seed = self.stage.seed * 1000 + epoch if self.stage.data.shuffle else None
        return self.batches.epoch(seed)

    def evaluate(self) -> list[float]:
        """``[loss_sum, num_correct, num_scored]`` over this worker's validation shard, latest weights."""
        self._pull(register=False)
        self.parts.model.eval()
        sums = torch.zeros(3, dtype=torch.float64)
        for batch in self.val_shard.iter_torch_batches(batch_size=self.batch_size, device="cpu"):
            inputs, targets, _ = self._on_device(batch)
            if self.augment is not None:
                inputs = self.augment.eval(inputs)
            sums += eval_step(self.parts, inputs, targets).cpu()
        return sums.tolist()

    def _on_device(self, batch: dict[str, torch.Tensor]):
        device = self.parts.strategy.device
        inputs = to_device(batch.pop("features"), device)  # float32 features or int64 token ids
        targets = to_device(batch.pop("label"), device, self.parts.task.label_dtype)
        return inputs, targets, {name: to_device(column, device) for name, column in batch.items()}

    def epoch_metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        for technique in self.techniques:
            metrics.update(technique.metrics())
        metrics.update(self.precision.metrics())
        return metrics

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
