"""The teacher soft-label cache: teachers' logits computed once, stored beside each row.

A distill stage with ``distill.cache: true`` runs its teachers over the training split
in one Ray Data ``map_batches`` pass and writes ``features, label, teacher_logits`` to
Parquet; its students (every Tune trial of the stage) then train from that file without
running a teacher. Row order is preserved, so with the same shuffling the students see
the same batches, and the same logits, as on-the-fly distillation. A stage that runs in
process (``stages/local_run.py``) computes the cache in process too
(:func:`write_soft_labels_in_process`: pyarrow, the same :class:`TeacherLogits`, no Ray).
"""

from __future__ import annotations

import warnings

from pathlib import Path

import pyarrow as pa
import torch

from rayeffi.data.arrow_datasets import column_tensor
from rayeffi.data.info import DatasetInfo
from rayeffi.data.columns import FEATURES, LABEL
from rayeffi.device import choose_device, to_device
from rayeffi.techniques.distill.config import DistillConfig
from rayeffi.models.inputs import INPUT_PREFIX, call_model
from rayeffi.recipe.sections import PrecisionConfig
from rayeffi.task import logits_of

TEACHER_LOGITS = "teacher_logits"
BATCH_ROWS = 512


class TeacherLogits:
    """A Ray Data callable class: loads the teachers once per actor, adds their logits."""

    def __init__(self, config: DistillConfig, info: DatasetInfo, precision: PrecisionConfig, use_gpu: bool = False):
        from rayeffi.precision import build_precision
        from rayeffi.techniques.distill.technique import load_teachers

        self.device = choose_device(use_gpu).device  # the CPU when CUDA is absent
        self.teachers = [teacher.to(self.device) for teacher in load_teachers(config, info)]
        self.precision = build_precision(precision)
        self.precision.device_type = self.device.type  # autocast on the teachers' device
        self.num_features = info.num_features

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> pa.Table:
        inputs = to_device(_rows(batch[FEATURES], torch.float32), self.device)
        named = {name: to_device(_rows(batch[name]), self.device) for name in batch.column_names
                 if name.startswith(INPUT_PREFIX)}  # the teachers' named inputs (attention_mask, ...)
        with self.precision.autocast():  # the teachers compute as they would inside the step
            logits = torch.cat([logits_of(call_model(teacher, inputs, named)).float() for teacher in self.teachers],
                               dim=1).cpu()  # host sync
        width = logits.shape[1]
        column = pa.FixedSizeListArray.from_arrays(pa.array(logits.numpy().ravel(), pa.float32()), width)
        return batch.append_column(TEACHER_LOGITS, column)


def _rows(column: pa.ChunkedArray, float_dtype=None) -> torch.Tensor:
    """A batch column as the workers get it (``data/arrow_datasets.py: column_tensor``), with
    integers as int64 (token ids, masks) and floats as ``float_dtype`` or float32."""
    values = column_tensor(column)
    if float_dtype is not None:
        return values.to(float_dtype)
    return values.float() if values.is_floating_point() else values.long()


def write_soft_labels(
    datasets: dict[str, ray.data.Dataset],
    config: DistillConfig,
    info: DatasetInfo,
    precision: PrecisionConfig,
    out_dir: Path,
    use_gpu: bool = False,
) -> tuple[str, str]:
    """Write ``out_dir/train`` (with teacher logits) and ``out_dir/val``; return their paths."""
    import ray.data

    context = ray.data.DataContext.get_current()
    preserve_order = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # the cache keeps the split's row order
    try:
        with warnings.catch_warnings():
            # max_restarts has no named parameter in this Ray Data: both ways to pass it warn
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            train = datasets["train"].map_batches(
                TeacherLogits,
                fn_constructor_kwargs={"config": config, "info": info, "precision": precision, "use_gpu": use_gpu},
                num_gpus=1 if use_gpu else None,  # the stage's scaling.use_gpu: the teachers run on a GPU
                batch_size=BATCH_ROWS,
                batch_format="pyarrow",
                concurrency=1,
                # one pass over a materialized split: a lost actor fails the stage instead of restarting
                max_restarts=0,
            )
        train_dir, val_dir = out_dir / "train", out_dir / "val"
        train.write_parquet(str(train_dir))
        datasets["val"].write_parquet(str(val_dir))
    finally:
        context.execution_options.preserve_order = preserve_order
    return str(train_dir), str(val_dir)



def write_soft_labels_in_process(
    datasets: dict,
    config: DistillConfig,
    info: DatasetInfo,
    precision: PrecisionConfig,
    out_dir: Path,
    use_gpu: bool = False,
) -> tuple[str, str]:
    """:func:`write_soft_labels` in this process, from ``data/arrow_datasets.py``'s datasets:
    the teachers' logits in batches of ``BATCH_ROWS``, rows in order; returns the two paths."""
    from rayeffi.data.arrow_datasets import write_parquet

    teachers = TeacherLogits(config, info, precision, use_gpu)
    table = datasets["train"].table
    batches = [teachers(table.slice(first, BATCH_ROWS)) for first in range(0, table.num_rows, BATCH_ROWS)]
    train = pa.concat_tables(batches) if batches else table
    return write_parquet(train, out_dir / "train"), write_parquet(datasets["val"].table, out_dir / "val")
