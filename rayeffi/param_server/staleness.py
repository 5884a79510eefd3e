"""Bounded staleness for asynchronous (Downpour) updates, as a pure object.

A gradient's staleness is ``v_apply - v_base``: the server versions (applied updates)
between the pull its weights came from and its own update. With a bound ``s``, no
gradient may be applied with staleness above ``s``; rather than drop late gradients,
pushes that would break the bound *for another worker's in-flight gradient* wait
(stale-synchronous parallel, Ho et al. 2013, counted in server versions).

Each in-flight gradient ``j`` has a deadline ``d_j = v_base_j + s``: the last version
at which it may still be applied. The gate applies a push from worker ``i`` at
version ``v`` only if the others can all still meet their deadlines afterwards, one
update each, earliest deadline first: with the other deadlines sorted,
``d_(1) <= d_(2) <= ...``, it needs ``v + r <= d_(r)`` for every rank ``r``. The
earliest-deadline gradient always passes this test (the invariant held before), so
the gate never deadlocks; and a new pull at version ``v`` (deadline ``v + s``) keeps the
invariant whenever ``s >= num_workers - 1``, which the recipe requires.
"""

from __future__ import annotations


class StalenessGate:
    """One server shard's view: which worker's gradient is in flight since which version."""

    def __init__(self, max_staleness: int | None):
        self.max_staleness = max_staleness
        self.bases: dict[int, int] = {}

    def on_pull(self, worker: int, version: int) -> None:
        """A training pull: the worker's next gradient is computed from ``version`` on
        (a pull in the middle of a span keeps the span's older base)."""
        self.bases.setdefault(worker, version)

    def can_apply(self, worker: int, version: int) -> bool:
        if self.max_staleness is None:
            return True
        deadlines = sorted(base + self.max_staleness for other, base in self.bases.items() if other != worker)
        return all(version + rank <= deadline for rank, deadline in enumerate(deadlines, start=1))

    def on_apply(self, worker: int, version: int, tagged_base: int) -> int:
        """Record the update of ``worker``'s gradient at ``version``; return its staleness.

        ``tagged_base`` is the version the worker says it pulled, used when this shard
        has no record (a shard restored from its checkpoint forgot who is in flight).
        """
        base = self.bases.pop(worker, tagged_base)
        return max(version - base, 0)

    def forget(self, worker: int) -> None:
        """A worker died: its in-flight gradient will never come."""
        self.bases.pop(worker, None)
