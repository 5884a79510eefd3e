"""A worker's batches of a streamed shard (``worker/batches.py``): windows of Arrow rows,
permuted by the epoch's seed and cut into batches, the rows short of a batch carried over."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from rayeffi.data.arrow_datasets import ArrowDataset
from rayeffi.worker.batches import STREAM_WINDOW_BYTES, ShardBatches


def _shard(num_rows: int) -> ArrowDataset:
    features = np.arange(num_rows * 3, dtype=np.float32).reshape(num_rows, 3)
    return ArrowDataset(pa.table({"features": pa.array(list(features), pa.list_(pa.float32(), 3)),
                                  "label": pa.array(np.arange(num_rows), pa.int64())}))


def _streamed(num_rows: int, rows_per_read: int, window_batches: int, drop_last: bool = False) -> ShardBatches:
    """A shard over its memory budget, whose windows hold ``window_batches`` batches."""
    row_bytes = STREAM_WINDOW_BYTES // (rows_per_read * window_batches)
    batches = ShardBatches(_shard(num_rows), rows_per_read, estimated_bytes=2, memory_budget=1,
                           drop_last=drop_last, row_bytes=row_bytes)
    assert not batches.in_memory and batches.window_rows == rows_per_read * window_batches
    return batches


@pytest.mark.parametrize("num_rows, drop_last", [(103, False), (103, True), (96, False), (5, False)])
def test_a_streamed_epoch_has_the_in_memory_epochs_batches_and_every_row_once(num_rows, drop_last):
    streamed = _streamed(num_rows, 8, window_batches=3, drop_last=drop_last)
    in_memory = ShardBatches(_shard(num_rows), 8, estimated_bytes=1, memory_budget=1, drop_last=drop_last)
    for seed in (None, 4):
        got, want = list(streamed.epoch(seed)), list(in_memory.epoch(seed))
        assert [len(batch["label"]) for batch in got] == [len(batch["label"]) for batch in want]
        labels = torch.cat([batch["label"] for batch in got]).tolist()
        assert len(set(labels)) == len(labels)  # no row twice
        assert len(labels) == (num_rows // 8 * 8 if drop_last else num_rows)
        for batch in got:  # features travel with their label
            assert torch.equal(batch["features"][:, 0], batch["label"].float() * 3)
    in_order = torch.cat([batch["label"] for batch in streamed.epoch(None)])
    assert torch.equal(in_order, torch.arange(num_rows)[:len(in_order)])


def test_a_streamed_shuffle_mixes_across_batches_and_repeats_for_its_seed():
    streamed = _streamed(200, 8, window_batches=5)
    first = torch.cat([batch["label"] for batch in streamed.epoch(11)])
    again = torch.cat([batch["label"] for batch in streamed.epoch(11)])
    other = torch.cat([batch["label"] for batch in streamed.epoch(12)])
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first, torch.arange(200))
    # a window of 40 rows mixes within it: the first batch draws from the whole first window
    assert first[:8].max() >= 8 and first[:40].max() < 40 + 8  # (+ the rows carried, none here)


def test_an_arrow_dataset_reads_in_pyarrow_slices_only():
    shard = _shard(10)
    assert [table.num_rows for table in shard.iter_batches(batch_size=4)] == [4, 4, 2]
    with pytest.raises(ValueError, match="pyarrow"):
        next(shard.iter_batches(batch_size=4, batch_format="numpy"))


def test_an_epoch_read_ahead_gives_the_same_batches():
    """``read_ahead`` begins the next epoch's first window on a thread: the epoch reads the same."""
    streamed = _streamed(103, 8, window_batches=3)
    want = [batch["label"] for batch in streamed.epoch(2)]
    streamed.read_ahead()
    assert [batch["label"].tolist() for batch in streamed.epoch(2)] == [batch.tolist() for batch in want]
    in_memory = ShardBatches(_shard(10), 8, estimated_bytes=1, memory_budget=1)
    in_memory.read_ahead()  # a shard in memory has nothing to fetch
    assert [len(batch["label"]) for batch in in_memory.epoch(None)] == [8, 2]


def test_a_read_ahead_that_failed_raises_where_the_epoch_reads():
    class Broken:
        def iter_batches(self, **_):
            raise OSError("the shard's node is gone")
            yield  # a generator, as Ray Data's is

    batches = ShardBatches(Broken(), 8, estimated_bytes=2, memory_budget=1)
    batches.read_ahead()
    with pytest.raises(OSError, match="node is gone"):
        next(batches.epoch(None))
