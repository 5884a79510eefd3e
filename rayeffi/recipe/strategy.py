"""What every ``parallel`` strategy config shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rayeffi.recipe.sections import Section


@dataclass(frozen=True)
class DataLayout:
    """How a stage's rows reach its workers, computed once from the config and used by the
    driver (how Ray Train splits the datasets) and by every worker (how many rows it reads)."""

    split_across_workers: bool
    """Ray Train gives each worker its own shard; else every worker reads every row and the
    strategy keeps its share (``Strategy.local_batch``)."""
    rows_per_read: int
    """Rows a worker reads from its dataset iterator per step."""
    drop_last: bool = False
    """Skip each epoch's last, partial training batch (a pipeline's micro-batch shapes are fixed)."""


class StrategyConfig(Section):
    """Base of the configs in the ``parallel`` union (``recipe/parallel.py``); ``strategy`` is the tag."""

    strategy: str

    def smoke_num_workers(self, num_workers: int, max_workers: int) -> int:
        """Workers a ``--smoke`` run keeps. A strategy whose layout fixes the worker count
        (pipeline stages, spatial tiles) overrides this to keep a valid layout."""
        return min(num_workers, max_workers)

    def data_layout(self, batch_size: int, num_workers: int) -> DataLayout:
        """Each worker reads its own shard, ``batch_size / num_workers`` rows a step."""
        return DataLayout(split_across_workers=True, rows_per_read=batch_size // max(num_workers, 1))

    @classmethod
    def resolve_stage_raw(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Rewrite a stage's raw dict before it is validated (e.g. move a count into
        ``scaling``); raise ValueError for a contradiction. Default: unchanged."""
        return raw

    def check_stage(self, stage: Any) -> None:
        """Checks that need the whole stage (workers, batch size, kind); raise ValueError."""
