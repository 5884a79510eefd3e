"""The driver's record of a run (``stages/progress.py``) on an in-process queue."""

from __future__ import annotations

import json
import pickle

from rayeffi.stages.progress import Progress


def _epoch(epoch: int) -> dict:
    return {"stage": "dense", "epoch": epoch, "train_loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.9,
            "samples_per_s": 100.0, "epoch_s": 0.1, "lr": 0.05}


def test_epochs_are_kept_by_epoch_with_one_copy_of_each_key(tmp_path):
    """A long run keeps every epoch for summary.json: each message arrives with its own copies of
    its keys (unpickled, as from Ray's queue), and the record shares one copy of each."""
    lines = []
    progress = Progress(lines.append, log_path=tmp_path / "progress.jsonl", in_process=True)
    for epoch in (1, 2, 2):  # a restarted group repeats epoch 2: the last report wins
        progress.queue.put(pickle.loads(pickle.dumps({**_epoch(epoch), "train_loss": 0.5 / epoch})))
    progress.drain()
    progress.close()
    first, second = progress.stage_history("dense")
    assert [row["epoch"] for row in (first, second)] == [1, 2] and second["train_loss"] == 0.25
    assert all(a is b for a, b in zip(first, second))  # the same key objects
    assert len(lines) == 3 and lines[0].startswith("[dense] epoch 1: train_loss 0.5000")
    logged = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in logged] == [1, 2, 2] and all(row["stage"] == "dense" for row in logged)
