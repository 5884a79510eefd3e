"""A stage in the driver's own process, without Ray: local mode in seconds.

A stage of ``scaling.num_workers: 0`` that needs no actor (no Tune, not the parameter
server) runs the one worker loop (``worker/loop.py: train_loop_per_worker``) right here,
with no Ray started, imported or initialised:

    data        pyarrow reads the checked sources through the same ``normalise``
                (``data/arrow_datasets.py``); the worker's ``ShardBatches`` builds the same
                in-memory shard from it and shuffles it with the same seeds as under Ray
    progress    the same ``Progress`` printer, on an in-process queue
    checkpoints each report goes where Ray Train's would (``STORAGE/NAME-xxxxxxxx/checkpoint_*``,
                the newest two kept), so ``--resume`` finds them; the last becomes the artifact
    strategy    a world of one: no process group

A Ray Train local-mode run (``stages/train_run.py`` with 0 workers) and this one give the
same metrics and weights (``tests/ray/test_train_stage.py``).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from rayeffi.checkpoint import CHECKPOINT_FILE
from rayeffi.data.arrow_datasets import build_arrow_datasets
from rayeffi.recipe.models import StageConfig
from rayeffi.stages.base import StageContext, StageResult, publish_checkpoint, worker_spec
from rayeffi.worker.loop import train_loop_per_worker

CHECKPOINTS_KEPT = 2
"""As Ray Train's ``CheckpointConfig(num_to_keep=2)`` (``stages/train_run.py``)."""


def needs_ray(stage: StageConfig) -> bool:
    """Whether the stage needs Ray: workers, Tune trials, or the parameter server's actors."""
    return stage.scaling.num_workers > 0 or stage.tune is not None or stage.parallel.strategy == "param_server"


def run_in_process(stage: StageConfig, context: StageContext) -> StageResult:
    """The stage's worker loop in this process; its last checkpoint becomes the artifact."""
    start = time.perf_counter()
    datasets = build_arrow_datasets(context.source, stage.data, stage.seed)
    store = StorageCheckpoints(context.storage_path, f"{stage.name}-{uuid.uuid4().hex[:8]}")
    spec = worker_spec(
        stage, context,
        local_mode=True,
        report_to=store.report,
        shards={name: [dataset] for name, dataset in datasets.items()},
        in_process=True,
    )
    train_loop_per_worker({"spec": spec})
    wall_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="rayeffi-local-") as directory:  # the storage may be a URI
        (Path(directory) / CHECKPOINT_FILE).write_bytes(store.last_data)
        artifact = publish_checkpoint(directory, context.stage_dir)
    history, extra = [], {"num_workers": 0}
    if context.progress is not None:
        context.progress.drain()
        history = context.progress.stage_history(stage.name)
        if stage.eval_every_steps is not None:  # validations within epochs, apart from the epoch history
            extra["evals"] = context.progress.stage_evals(stage.name)
    return StageResult(stage.name, stage.kind, artifact, history, wall_s, extra)


class StorageCheckpoints:
    """Keeps each reported checkpoint where Ray Train would: ``STORAGE/RUN/checkpoint_<time>/state.pt``
    (a path or a pyarrow URI), the newest ``CHECKPOINTS_KEPT``; the last one's bytes also stay in memory."""

    def __init__(self, storage: str | Path, run_name: str):
        self.fs, root = _filesystem(str(storage))
        self.run_dir = f"{root.rstrip('/')}/{run_name}"
        self.kept: list[str] = []
        self.last_data: bytes | None = None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str) -> None:
        """``worker/loop.py``'s ``report_to``: called with a directory holding ``state.pt``, removed after."""
        data = (Path(checkpoint_dir) / CHECKPOINT_FILE).read_bytes()
        directory = f"{self.run_dir}/checkpoint_{datetime.now().strftime('%Y-%m-%d_%H-%M-%S.%f')}"
        self.fs.create_dir(directory)
        with self.fs.open_output_stream(f"{directory}/{CHECKPOINT_FILE}") as stream:
            stream.write(data)
        self.kept.append(directory)
        while len(self.kept) > CHECKPOINTS_KEPT:
            self.fs.delete_dir(self.kept.pop(0))
        self.last_data = data


def _filesystem(storage: str):
    """``(pyarrow filesystem, path inside it)`` (as ``driver/storage.py`` opens the storage)."""
    import pyarrow.fs

    if "://" not in storage:
        return pyarrow.fs.LocalFileSystem(), storage
    return pyarrow.fs.FileSystem.from_uri(storage)
