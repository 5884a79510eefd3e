"""Score a finished stage's model on other data: ``rayeffi evaluate DIR --data PATH`` and the run's
``data.test_path``, evaluated once after the last stage.

The rows are read as a stage's validation rows are (the stage's ``data`` section with ``path``
pointing at the new file: the same columns, transform, padding and named inputs, checked the
same way), and scored by the worker's own ``evaluate`` (``worker/epoch.py``) in this process,
with the stage's precision and task (its loss and metrics, the user's included). The data must
have the training data's shape: the same features (or sequence length), classes and vocabulary.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from rayeffi.checkpoint import load_checkpoint
from rayeffi.data.arrow_datasets import build_arrow_datasets
from rayeffi.data.info import DatasetInfo
from rayeffi.data.sources import resolve_source
from rayeffi.errors import UserError
from rayeffi.models import check_builder
from rayeffi.parallel import build_strategy
from rayeffi.precision import build_precision
from rayeffi.recipe.models import StageConfig
from rayeffi.recipe.parallel import DataParallelConfig
from rayeffi.result import read_summary, stage_config, stage_data_info, stage_entry
from rayeffi.task import build_task
from rayeffi.worker.build import assemble, initial_model
from rayeffi.worker.epoch import evaluate, stage_batches, validation_metrics
from rayeffi.worker.loop import row_augment

AT_MOST = ("num_classes", "vocab_size")
"""What the new data may have fewer of than the training data (its labels and ids must fit the model)."""


def evaluate_run(run_dir: str | Path, data: str | Path, stage: str | None = None, *,
                 model: Callable[..., nn.Module] | None = None) -> dict[str, Any]:
    """``{"stage", "data", "rows", "metrics"}``: ``stage``'s trained model (default: the last
    finished) scored on every row of the Parquet file or folder ``data``; ``metrics`` are
    named ``test_...`` (``test_loss``, ``test_accuracy``, ...). ``model``: the builder object
    the run was given, if any."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    entry = stage_entry(summary, run_dir, stage)
    config = stage_config(summary, entry, check_builder(model))
    trained = stage_data_info(entry, config, run_dir)
    with tempfile.TemporaryDirectory(prefix="rayeffi-evaluate-") as cache:
        return {"stage": entry["name"],
                **score(config, trained, entry["checkpoint"], data, Path(cache), "--data")}


def describe(result: dict[str, Any]) -> str:
    """One line for a scored stage: ``STAGE on N rows of PATH: test_loss ...  test_accuracy ...``."""
    figures = "  ".join(f"{key} {value:.4f}" for key, value in result["metrics"].items())
    return f"{result['stage']} on {result['rows']} rows of {result['data']}: {figures}"


def test_source(config: StageConfig, trained: DatasetInfo, data: str | Path, cache_dir: Path, key: str):
    """``(source, data config)`` of the rows at ``data`` read as ``config``'s validation rows, checked
    to fit the model trained on ``trained`` (``UserError`` naming ``key`` and what differs otherwise)."""
    path = Path(data).absolute()
    if not path.exists():
        raise UserError(f"{key} {path} does not exist: give a Parquet file or folder with the training data's columns")
    update: dict[str, Any] = {"dataset": "parquet", "path": str(path), "val_path": str(path), "test_path": None,
                              "max_samples": None, "max_val_samples": None, "batch_size": 1}  # no training here
    if config.data.dataset != "parquet":  # a built-in set's columns: features (or tokens) and label
        update["feature_column"] = "tokens" if config.data.dataset == "text" else None
    if trained.vocab_size is not None:  # token rows: padded or cut to the trained length, in its vocabulary
        update.update(seq_len=trained.num_features, vocab_size=trained.vocab_size)
    data_config = config.data.model_copy(update=update)
    source = resolve_source(data_config, config.seed, cache_dir, config.task)
    differs = [f"{field} {getattr(source.info, field)} (trained on {getattr(trained, field)})"
               for field in ("num_features", *AT_MOST) if getattr(source.info, field) != getattr(trained, field)
               and not (field in AT_MOST and (getattr(source.info, field) or 0) <= (getattr(trained, field) or 0))]
    if differs:
        raise UserError(f"{key} {path} does not fit the model of stage {config.name!r}: {', '.join(differs)}: give "
                        "rows with the training data's columns and shape")
    return source, data_config


def score(config: StageConfig, trained: DatasetInfo, checkpoint: str, data: str | Path, cache_dir: Path,
          key: str) -> dict[str, Any]:
    """Every row of ``data`` through ``checkpoint``'s weights in ``config``'s model (see :func:`evaluate_run`)."""
    source, data_config = test_source(config, trained, data, cache_dir, key)
    info = DatasetInfo(**{**trained.__dict__, "num_val": source.info.num_val})
    stage = config.model_copy(update={"init_from": None, "parallel": DataParallelConfig()})
    device = torch.device("cuda" if stage.scaling.use_gpu and torch.cuda.is_available() else "cpu")
    strategy = build_strategy(stage.parallel, 0, 1, device, info)
    net = initial_model(stage, info, None)
    net.load_state_dict(load_checkpoint(checkpoint)["model"])
    parts = assemble(net, strategy, build_precision(stage.precision), lambda m: torch.optim.SGD(m.parameters(), 0.0),
                     [], build_task(stage.task))
    rows = build_arrow_datasets(source, data_config, config.seed)["val"]
    sums = evaluate(parts, stage_batches(rows, "val", stage, info, 1), row_augment(stage, info, 0))
    metrics = validation_metrics(parts, sums.tolist())
    return {"data": source.val_path, "rows": len(rows),
            "metrics": {key.replace("val_", "test_", 1): value for key, value in metrics.items()}}
