"""``parallel: {strategy: param_server, ...}``: a sharded parameter server on Ray actors.

After Dean et al., "Large Scale Distributed Deep Networks" (NIPS 2012): model
replicas (worker actors) train on their own data shards and exchange gradients and
weights with parameter-server shards (server actors). See
``rayeffi/param_server/`` for the execution model.

Worker count: ``parallel.num_workers`` is shorthand for ``scaling.num_workers``
(the worker actors, each reserving ``scaling.resources_per_worker``). A stage that
gives both must give the same number; the resolved count always lives in
``scaling.num_workers`` (``parallel.num_workers`` is cleared after resolution, so a
dumped config validates again and ``--smoke`` can shrink it).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from rayeffi.recipe.strategy import StrategyConfig


class ParamServerConfig(StrategyConfig):
    """Parameter server: sharded servers, gradient workers, sync or async (Downpour) updates."""

    strategy: Literal["param_server"] = "param_server"
    num_servers: PositiveInt = 2
    """Server shards; parameters are assigned whole, balanced by size (largest first)."""
    num_workers: PositiveInt | None = None
    """Gradient worker actors: shorthand for ``scaling.num_workers`` (see the module docstring)."""
    mode: Literal["sync", "async"] = "async"
    """``sync``: each server update waits for every worker's gradient (large-batch SGD).
    ``async`` (Downpour SGD): each push is applied as it arrives."""
    max_staleness: int | None = Field(None, ge=0)
    """``async`` only: no gradient is applied more than this many server versions after the
    weights it was computed on; a push that would break the bound for another worker's
    in-flight gradient waits (stale-synchronous). None: unbounded (plain Downpour)."""
    fetch_every: PositiveInt = 1
    """Workers pull fresh weights every this many steps (Dean's n_fetch)."""
    push_every: PositiveInt = 1
    """Workers push their accrued gradients every this many steps (Dean's n_push)."""
    server_optimizer: Literal["sgd", "momentum", "adagrad"] | None = None
    """The update each server applies to its shard, with ``optimizer.lr`` (and its schedule)
    and ``optimizer.weight_decay``; ``momentum`` uses ``optimizer.momentum``. Default:
    ``momentum`` if ``optimizer.momentum > 0``, else ``sgd``."""
    gradient_dtype: Literal["fp32", "bf16", "fp16"] | None = None
    """Dtype gradients travel in (servers keep FP32 weights and optimizer state). Default:
    the precision policy's (``bf16`` -> bf16, ``fp16`` -> fp16, else fp32)."""
    checkpoint_every: PositiveInt = 50
    """Each server writes its shard (weights, optimizer state, version) every this many
    updates and at every epoch end; a restarted server resumes from it."""
    server_cpus: PositiveFloat = 0.25
    """Logical CPUs each server actor reserves (fractional, so servers never starve workers)."""

    @model_validator(mode="after")
    def _combinations(self) -> ParamServerConfig:
        if self.mode == "sync":
            if self.max_staleness is not None:
                raise ValueError("parallel.max_staleness applies to mode 'async' only: remove it or set parallel.mode=async")
            if self.fetch_every != 1 or self.push_every != 1:
                raise ValueError(
                    "parallel.mode 'sync' pulls and pushes every step: set parallel.fetch_every=1 and "
                    "parallel.push_every=1, or parallel.mode=async"
                )
        if self.push_every % self.fetch_every:
            raise ValueError(
                f"parallel.fetch_every {self.fetch_every} must divide parallel.push_every {self.push_every}, so every "
                "push is followed by a fresh pull (staleness is counted from it): e.g. fetch_every=1"
            )
        return self

    @classmethod
    def resolve_stage_raw(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Move ``parallel.num_workers`` into ``scaling.num_workers``; both given must agree."""
        parallel = raw.get("parallel")
        if not isinstance(parallel, dict) or parallel.get("num_workers") is None:
            return raw
        count = parallel["num_workers"]
        scaling = raw.get("scaling") if isinstance(raw.get("scaling"), dict) else {}
        if scaling.get("num_workers") is not None and scaling["num_workers"] != count:
            raise ValueError(
                f"parallel.num_workers {count} and scaling.num_workers {scaling['num_workers']} disagree: both count "
                "the parameter server's worker actors; remove one of them or give both the same value"
            )
        return {**raw, "parallel": {**parallel, "num_workers": None}, "scaling": {**scaling, "num_workers": count}}

    def check_stage(self, stage: Any) -> None:
        """Combinations with the rest of the stage, checked when the stage is validated."""
        if stage.scaling.num_workers < 1:
            raise ValueError(
                "parallel.strategy 'param_server' needs worker actors: set scaling.num_workers "
                "(or parallel.num_workers) >= 1; local mode (0) has none"
            )
        if stage.tune is not None:
            raise ValueError("a tuned stage runs Ray Train trials: remove tune or use parallel.strategy=data_parallel")
        if stage.optimizer.name != "sgd":
            raise ValueError(
                f"parallel.strategy 'param_server': servers apply parallel.server_optimizer, not optimizer.name "
                f"{stage.optimizer.name!r}: set optimizer.name=sgd and choose parallel.server_optimizer"
            )
        if self.server_optimizer == "momentum" and stage.optimizer.momentum == 0:
            raise ValueError("parallel.server_optimizer 'momentum' needs optimizer.momentum > 0, e.g. 0.9")
        if self.mode == "async" and self.max_staleness is not None and self.max_staleness < stage.scaling.num_workers - 1:
            raise ValueError(
                f"parallel.max_staleness {self.max_staleness} is below num_workers - 1 = "
                f"{stage.scaling.num_workers - 1} (each other worker may push once while one computes): "
                "raise it, or use parallel.mode=sync"
            )

    def resolved_server_optimizer(self, momentum: float) -> str:
        return self.server_optimizer or ("momentum" if momentum > 0 else "sgd")

    def resolved_gradient_dtype(self, policy: str) -> str:
        return self.gradient_dtype or {"bf16": "bf16", "fp16": "fp16"}.get(policy, "fp32")
