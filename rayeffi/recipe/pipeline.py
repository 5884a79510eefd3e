"""``parallel: {strategy: pipeline, ...}``: pipeline-model parallelism (GPipe, 1F1B, interleaved).

The model is cut into ``num_stages x stages_per_worker`` consecutive chunks; each Ray
Train worker of a pipeline holds ``stages_per_worker`` of them and micro-batches stream
through (Huang et al., "GPipe", NeurIPS 2019; Narayanan et al., "PipeDream", SOSP 2019).
``scaling.num_workers = data_parallel x num_stages``: a 2-D mesh, pipelines side by side.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from rayeffi.recipe.strategy import DataLayout, StrategyConfig

SINGLE_STAGE_SCHEDULES = ("gpipe", "1f1b")
"""One model chunk per worker."""
LOOPED_SCHEDULES = ("interleaved_1f1b", "looped_bfs", "interleaved_zero_bubble")
"""``stages_per_worker >= 2`` chunks per worker, placed round-robin (worker r: r, r+K, ...)."""
V_SCHEDULES = ("zbv_zero_bubble", "dualpipev")
"""Exactly 2 chunks per worker, placed in a V (worker r: r and 2K-1-r)."""
SCHEDULES = SINGLE_STAGE_SCHEDULES + LOOPED_SCHEDULES + V_SCHEDULES


class PipelineConfig(StrategyConfig):
    """How the model is split into pipeline stages and how micro-batches are scheduled."""

    strategy: Literal["pipeline"] = "pipeline"
    num_stages: int = Field(2, ge=2)
    """Pipeline depth K: workers per pipeline. ``scaling.num_workers`` must be a multiple
    of it; the quotient is the data-parallel degree."""
    num_microbatches: PositiveInt = 4
    """M: each data-parallel replica's share of the batch is cut into M equal micro-batches.
    The idle share of an ideal schedule is the bubble ``(K-1) / (M+K-1)``."""
    schedule: Literal[SCHEDULES] = "1f1b"  # type: ignore[valid-type]
    """``gpipe`` (all forwards, then all backwards), ``1f1b`` (PipeDream-flush), and the
    multi-chunk ``interleaved_1f1b``, ``looped_bfs``, ``interleaved_zero_bubble``,
    ``zbv_zero_bubble``, ``dualpipev`` from ``torch.distributed.pipelining``."""
    stages_per_worker: PositiveInt | None = None
    """Model chunks per worker: 1 for gpipe/1f1b, 2 by default (>= 2) for the looped
    schedules, exactly 2 for the V schedules."""
    split_points: tuple[str, ...] | None = None
    """Module names where a new chunk begins, e.g. ``[layers.3]`` (a container name means
    its first layer); ``num_stages x stages_per_worker - 1`` of them. Without them the
    split is balanced automatically (``balance``)."""
    balance: Literal["params", "time"] = "params"
    """Automatic split: equalise parameter counts, or forward+backward time measured on
    one micro-batch by the first worker (and shared with the others)."""

    @property
    def chunks_per_worker(self) -> int:
        if self.stages_per_worker is not None:
            return self.stages_per_worker
        return 1 if self.schedule in SINGLE_STAGE_SCHEDULES else 2

    @property
    def num_chunks(self) -> int:
        """Model chunks in one pipeline: ``num_stages x stages_per_worker``."""
        return self.num_stages * self.chunks_per_worker

    @model_validator(mode="after")
    def _schedule_fits(self) -> PipelineConfig:
        chunks = self.chunks_per_worker
        if self.schedule in SINGLE_STAGE_SCHEDULES and chunks != 1:
            raise ValueError(
                f"parallel.schedule {self.schedule!r} runs one chunk per worker, not stages_per_worker {chunks}: "
                "remove stages_per_worker or use schedule interleaved_1f1b"
            )
        if self.schedule in LOOPED_SCHEDULES and chunks < 2:
            raise ValueError(
                f"parallel.schedule {self.schedule!r} needs parallel.stages_per_worker >= 2, got {chunks}: "
                "raise it or use schedule 1f1b"
            )
        if self.schedule in V_SCHEDULES and chunks != 2:
            raise ValueError(f"parallel.schedule {self.schedule!r} needs parallel.stages_per_worker 2, got {chunks}")
        if self.schedule != "gpipe" and self.num_microbatches < self.num_stages:
            raise ValueError(
                f"parallel.num_microbatches {self.num_microbatches} is below parallel.num_stages {self.num_stages}: "
                f"schedule {self.schedule!r} needs at least one micro-batch per stage; raise it or use gpipe"
            )
        if self.schedule in ("interleaved_1f1b", "interleaved_zero_bubble") and self.num_microbatches % self.num_stages:
            raise ValueError(
                f"parallel.schedule {self.schedule!r} needs parallel.num_microbatches to be a multiple of "
                f"num_stages {self.num_stages}, got {self.num_microbatches}"
            )
        if self.schedule == "dualpipev" and self.num_microbatches < self.num_chunks:
            raise ValueError(
                f"parallel.schedule 'dualpipev' needs parallel.num_microbatches >= {self.num_chunks} "
                f"(2 x num_stages), got {self.num_microbatches}"
            )
        if self.split_points is not None and len(self.split_points) != self.num_chunks - 1:
            raise ValueError(
                f"parallel.split_points has {len(self.split_points)} names but {self.num_chunks} chunks "
                f"(num_stages {self.num_stages} x stages_per_worker {chunks}) need {self.num_chunks - 1}"
            )
        return self

    def data_parallel_size(self, num_workers: int) -> int:
        return max(num_workers, 1) // self.num_stages

    def smoke_num_workers(self, num_workers: int, max_workers: int) -> int:
        # a smaller run keeps whole pipelines: drop data-parallel replicas, never stages
        return self.num_stages * max(1, min(self.data_parallel_size(num_workers), max_workers // self.num_stages))

    def data_layout(self, batch_size: int, num_workers: int) -> DataLayout:
        # every stage of a pipeline needs the same batch (inputs first, labels last), and the
        # micro-batch shapes are fixed at the first step
        return DataLayout(split_across_workers=False, rows_per_read=batch_size, drop_last=True)

    def check_stage(self, stage: Any) -> None:
        num_workers = stage.scaling.num_workers
        if num_workers < self.num_stages or num_workers % self.num_stages:
            raise ValueError(
                f"scaling.num_workers {num_workers} is not a multiple of parallel.num_stages {self.num_stages}: "
                f"use num_workers = data_parallel x {self.num_stages}, e.g. {self.num_stages}"
            )
        rows = self.data_parallel_size(num_workers) * self.num_microbatches
        if stage.data.batch_size % rows:
            raise ValueError(
                f"data.batch_size {stage.data.batch_size} does not split into {self.data_parallel_size(num_workers)} "
                f"replica(s) x {self.num_microbatches} micro-batches: use a multiple of {rows}"
            )
