"""A worker's batches from its Ray Data shard, epoch after epoch.

Iterating Ray Data costs milliseconds per batch (the iterator, Arrow-to-tensor
conversion, the shuffle buffer), as much as a small model's whole step. A shard whose
rows fit ``memory_budget`` (``data.in_memory_mb``) is therefore read through Ray Data once, kept as tensors,
and shuffled in memory each epoch (a full permutation seeded by ``(seed, epoch)``, the
same for a restarted worker); a larger shard streams through Ray Data with a seeded
local shuffle buffer, as before. The Ray Train loop and the parameter server's
gradient workers read their shards through this one class.
"""

from __future__ import annotations

from typing import Iterator

import torch

SHUFFLE_BUFFER_ROWS = 2048


class ShardBatches:
    def __init__(self, shard, rows_per_read: int, estimated_bytes: int, memory_budget: int,
                 drop_last: bool = False):
        self.shard = shard
        self.rows_per_read = rows_per_read
        self.drop_last = drop_last
        self.in_memory = estimated_bytes <= memory_budget
        self._rows: dict[str, torch.Tensor] | None = None

    @property
    def steps(self) -> int | None:
        """Batches per epoch, once the shard is in memory (None while streaming)."""
        if self._rows is None:
            return None
        num_rows = len(next(iter(self._rows.values()))) if self._rows else 0
        return num_rows // self.rows_per_read if self.drop_last else -(-num_rows // self.rows_per_read)

    def epoch(self, shuffle_seed: int | None) -> Iterator[dict[str, torch.Tensor]]:
        """This epoch's batches (``shuffle_seed`` None: in the shard's order)."""
        if not self.in_memory:
            yield from self.shard.iter_torch_batches(
                batch_size=self.rows_per_read,
                drop_last=self.drop_last,
                local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS if shuffle_seed is not None else None,
                local_shuffle_seed=shuffle_seed,
                device="cpu",  # host tensors, moved to the model's device once by the caller
            )
            return
        rows = self._read()
        num_rows = len(next(iter(rows.values()))) if rows else 0
        if shuffle_seed is None:
            order = torch.arange(num_rows)
        else:
            order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(shuffle_seed))
        stop = num_rows - num_rows % self.rows_per_read if self.drop_last else num_rows
        for first in range(0, stop, self.rows_per_read):
            picked = order[first:first + self.rows_per_read]
            yield {column: values[picked] for column, values in rows.items()}

    def _read(self) -> dict[str, torch.Tensor]:
        if self._rows is None:  # once per run, in the shard's order
            # batches of the step's size, as streaming reads them: a streaming split's
            # coordinator was seen to hand one worker no rows when read by whole blocks
            parts = list(self.shard.iter_torch_batches(batch_size=self.rows_per_read, device="cpu"))
            self._rows = {column: torch.cat([part[column] for part in parts]) for column in parts[0]} if parts else {}
        return self._rows


def estimated_shard_bytes(num_rows: int, num_features: int, num_workers: int, split: bool) -> int:
    """A worker's share of ``num_rows`` rows of float32 features (a margin for labels and extras)."""
    rows = -(-num_rows // max(num_workers, 1)) if split else num_rows
    return rows * (4 * num_features + 64)


def shards_fit_in_memory(info, num_workers: int, split: bool, memory_budget: int) -> bool:
    """Whether every worker's training and validation shards fit ``memory_budget``
    (``data.in_memory_mb``): the driver then hands each worker its shards itself
    (``stages/train_run.py``) and the workers keep them as tensors."""
    return all(estimated_shard_bytes(rows, info.num_features, num_workers, split) <= memory_budget
               for rows in (info.num_train, info.num_val))
