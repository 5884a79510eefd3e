"""A worker's batches from its Ray Data shard, epoch after epoch.

Iterating Ray Data costs milliseconds per batch (the iterator, Arrow-to-tensor
conversion, the shuffle buffer), as much as a small model's whole step. A shard whose
rows fit ``memory_budget`` (``data.in_memory_mb``) is therefore read through Ray Data once, kept as tensors,
and shuffled in memory each epoch (a full permutation seeded by ``(seed, epoch)``, the
same for a restarted worker). A larger shard streams: Ray Data hands it over in windows
of ``STREAM_WINDOW_BYTES`` as Arrow tables (fetched ahead on Ray Data's own thread), each
window becomes tensors in one copy per column, is permuted by the epoch's seed and cut
into batches; the rows short of a batch carry over into the next window. A window of
rows rather than a row-at-a-time shuffle buffer (Ray's ``local_shuffle_buffer_size``)
costs one conversion per window instead of one per batch (``rayeffi bench ddp``:
docs/benchmarks.md). The Ray Train loop, the parameter server's gradient workers and
local mode read their shards through this one class.
"""

from __future__ import annotations

import threading
from typing import Iterator

import torch

from rayeffi.data.arrow_datasets import column_tensor

STREAM_WINDOW_BYTES = 32 * 2**20
"""How much of a streamed shard is held as tensors at once: the span its shuffle mixes."""


class ShardBatches:
    def __init__(self, shard, rows_per_read: int, estimated_bytes: int, memory_budget: int,
                 drop_last: bool = False, row_bytes: int = 4096):
        self.shard = shard
        self.rows_per_read = rows_per_read
        self.drop_last = drop_last
        self.in_memory = estimated_bytes <= memory_budget
        # a streamed window: whole batches, as many as STREAM_WINDOW_BYTES holds (one at least)
        self.window_rows = rows_per_read * max(1, STREAM_WINDOW_BYTES // max(row_bytes, 1) // rows_per_read)
        self._rows: dict[str, torch.Tensor] | None = None
        self._ahead: _FirstWindow | None = None

    @property
    def steps(self) -> int | None:
        """Batches per epoch, once the shard is in memory (None while streaming)."""
        if self._rows is None:
            return None
        num_rows = _num_rows(self._rows)
        return num_rows // self.rows_per_read if self.drop_last else -(-num_rows // self.rows_per_read)

    def epoch(self, shuffle_seed: int | None) -> Iterator[dict[str, torch.Tensor]]:
        """This epoch's batches (``shuffle_seed`` None: in the shard's order). A shard in memory
        is one window: the whole shard, permuted at once."""
        if self.in_memory:
            windows = iter([self._read()])
        else:
            ahead, self._ahead = self._ahead, None
            windows = ahead.windows() if ahead is not None else self._windows()
        generator = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
        carry: dict[str, torch.Tensor] = {}
        for rows in windows:
            if carry:
                rows = {column: torch.cat([carry[column], values]) for column, values in rows.items()}
            num_rows = _num_rows(rows)
            order = None if generator is None else torch.randperm(num_rows, generator=generator)
            full = num_rows - num_rows % self.rows_per_read
            for first in range(0, full, self.rows_per_read):
                yield _take(rows, order, first, first + self.rows_per_read)
            carry = _take(rows, order, full, num_rows)
        if carry and _num_rows(carry) and not self.drop_last:
            yield carry

    def read_ahead(self) -> None:
        """Begin the next epoch of a streamed shard now, on a thread, up to its first window: Ray
        Data starts an executor for every pass over a dataset (tens of milliseconds), which the
        epoch's first step would otherwise wait out. Called after the epoch's training batches,
        before validation, where another epoch follows; a shard in memory ignores it."""
        if not self.in_memory and self._ahead is None:
            self._ahead = _FirstWindow(self._windows())

    def _windows(self) -> Iterator[dict[str, torch.Tensor]]:
        """The shard in windows of ``window_rows`` rows (Ray Data's batches of that size, whatever
        its blocks' sizes), each column one tensor."""
        for table in self.shard.iter_batches(batch_size=self.window_rows, batch_format="pyarrow", prefetch_batches=1):
            yield {column: column_tensor(table[column]) for column in table.column_names}

    def _read(self) -> dict[str, torch.Tensor]:
        if self._rows is None:  # once per run, in the shard's order
            parts = list(self._windows())
            self._rows = {column: torch.cat([part[column] for part in parts]) for column in parts[0]} if parts else {}
        return self._rows


class _FirstWindow(threading.Thread):
    """The first window of an epoch's windows, fetched on a thread; then the rest, in order."""

    def __init__(self, windows: Iterator[dict[str, torch.Tensor]]):
        super().__init__(name="rayeffi-read-ahead", daemon=True)
        self._windows, self._first, self._error = windows, None, None
        self.start()

    def run(self) -> None:
        try:
            self._first = next(self._windows, None)
        except BaseException as exc:  # raised again where the epoch reads it
            self._error = exc

    def windows(self) -> Iterator[dict[str, torch.Tensor]]:
        self.join()
        if self._error is not None:
            raise self._error
        if self._first is not None:
            yield self._first
            yield from self._windows


def _num_rows(rows: dict[str, torch.Tensor]) -> int:
    return len(next(iter(rows.values()))) if rows else 0


def _take(rows: dict[str, torch.Tensor], order: torch.Tensor | None, start: int, stop: int) -> dict[str, torch.Tensor]:
    """Rows ``start:stop`` of a window, through ``order`` when it is shuffled; a copy either way
    (a batch never aliases the shard a worker keeps in memory)."""
    if order is None:
        return {column: values[start:stop].clone() for column, values in rows.items()}
    picked = order[start:stop]
    return {column: values[picked] for column, values in rows.items()}


def estimated_shard_bytes(num_rows: int, num_features: int, num_workers: int, split: bool) -> int:
    """A worker's share of ``num_rows`` rows of float32 features (a margin for labels and extras)."""
    rows = -(-num_rows // max(num_workers, 1)) if split else num_rows
    return rows * (4 * num_features + 64)
