"""What every ``parallel`` strategy config shares."""

from __future__ import annotations

from typing import Any

from rayeffi.recipe.sections import Section


class StrategyConfig(Section):
    """Base of the configs in the ``parallel`` union (``recipe/parallel.py``); ``strategy`` is the tag."""

    strategy: str

    def smoke_num_workers(self, num_workers: int, max_workers: int) -> int:
        """Workers a ``--smoke`` run keeps. A strategy whose layout fixes the worker count
        (pipeline stages, spatial tiles) overrides this to keep a valid layout."""
        return min(num_workers, max_workers)

    def splits_data_per_worker(self) -> bool:
        """Whether Ray Train gives each worker its own shard of the datasets (else every
        worker reads all rows and the strategy picks its share)."""
        return True

    @classmethod
    def resolve_stage_raw(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Rewrite a stage's raw dict before it is validated (e.g. move a count into
        ``scaling``); raise ValueError for a contradiction. Default: unchanged."""
        return raw

    def check_stage(self, stage: Any) -> None:
        """Checks that need the whole stage (workers, batch size, kind); raise ValueError."""
