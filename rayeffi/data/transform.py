"""The user's ``data.transform``: applied once, on the driver, before any check or read.

``package.module:function`` takes a batch of the user's rows as a pyarrow Table and returns
a pyarrow Table, a dict of columns or a pandas DataFrame with as many rows. The driver runs
it batch by batch (bounded memory) over ``data.path`` and ``data.val_path`` and writes
Parquet under ``OUT/data/transformed/FINGERPRINT/``; every later check (``sources.py``) and
read (Ray Data, the in-memory shard, local mode) uses those files, so they all see the same
rows. The fingerprint covers the input files (path, size, modification time) and the
transform's module source, so a rerun or ``--resume`` into the same run directory reuses
the files. Why on the driver and not in Ray Data's ``map_batches``: docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from rayeffi.data.checks import open_parquet
from rayeffi.errors import UserError
from rayeffi.recipe.sections import DataConfig, TaskConfig
from rayeffi.task import resolve_function

BATCH_ROWS = 1024
"""Rows the transform sees at a time (the last batch of a file may be shorter)."""
CHECK_ROWS = 2
"""The first rows transformed and checked before the full pass."""
FORMAT_VERSION = 1
"""Part of the fingerprint: raised when the written layout changes."""
DONE_FILE = "done.json"


def resolve_transform(path: str) -> Callable[[pa.Table], Any]:
    """``package.module:function`` -> the function; one-line ``UserError`` otherwise."""
    return resolve_function(path, "data.transform")


def apply_transform(function: Callable[[pa.Table], Any], batch: pa.Table, name: str, where: str) -> pa.Table:
    """``function(batch)`` as a pyarrow Table of as many rows; ``UserError`` naming ``name`` otherwise."""
    try:
        output = function(batch)
    except Exception as exc:  # the user's function: one line, not a traceback
        raise UserError(f"data.transform {name} failed on a batch of {batch.num_rows} rows of {where} "
                        f"({type(exc).__name__}: {exc})") from None
    table = as_table(output, name)
    if table.num_rows != batch.num_rows:
        raise UserError(f"data.transform {name} returned {table.num_rows} rows for a batch of {batch.num_rows} "
                        f"rows of {where}: it must return one row per row it receives")
    return table


def as_table(output: Any, name: str) -> pa.Table:
    """A pyarrow Table, a dict of columns or a pandas DataFrame -> a pyarrow Table."""
    if isinstance(output, pa.Table):
        return output
    pandas = sys.modules.get("pandas")  # a DataFrame can only come from a process that imported pandas
    try:
        if isinstance(output, dict):
            return pa.table(output)
        if pandas is not None and isinstance(output, pandas.DataFrame):
            return pa.Table.from_pandas(output, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise UserError(f"data.transform {name} returned columns pyarrow cannot read as a table "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0]}): return columns of equal length") from None
    raise UserError(f"data.transform {name} returned a {type(output).__name__}: return a pyarrow Table, a dict of "
                    "columns or a pandas DataFrame")


def fingerprint(files: list[str], function: Callable) -> str:
    """A hash of the input files (path, size, modification time) and the transform's module source."""
    digest = hashlib.sha256(f"{FORMAT_VERSION}:{function.__module__}:{function.__qualname__}".encode())
    source_file = inspect.getsourcefile(function)
    digest.update(Path(source_file).read_bytes() if source_file else inspect.getsource(function).encode())
    for file in sorted(files):
        stat = os.stat(file)
        digest.update(f"{Path(file).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def columns_read(config: DataConfig, task: TaskConfig) -> list[str]:
    """The columns of the (transformed) rows the recipe reads: the features, the labels
    except for a language model (which shifts its inputs without them), and ``data.inputs``."""
    named = [column for column in config.feature_columns or () if not any(char in column for char in "*?[")]  # no globs
    columns = [config.feature_column] if config.feature_column else named
    if task.name != "language_modeling":
        columns.append(config.label_column)
    return columns + [column for column in config.inputs.values() if column not in columns]


def transformed_config(config: DataConfig, cache_dir: Path, task: TaskConfig) -> DataConfig:
    """``config`` with ``path`` and ``val_path`` pointing at the transformed Parquet files
    (written now, or found from an earlier run with the same fingerprint)."""
    name = config.transform
    function = resolve_transform(name)
    inputs = {"train": ("data.path", config.path), "val": ("data.val_path", config.val_path)}
    datasets = {split: open_parquet(path, key, None, None) for split, (key, path) in inputs.items() if path}
    target = Path(cache_dir) / "transformed" / fingerprint([f for d in datasets.values() for f in d.files], function)
    if not (target / DONE_FILE).exists():
        check_first_rows(function, datasets["train"], name, config.path, columns_read(config, task))
        _write_all(function, datasets, name, inputs, target)
    update = {"path": str(target / "train.parquet")}
    if "val" in datasets:
        update["val_path"] = str(target / "val.parquet")
    return config.model_copy(update=update)


def check_first_rows(function: Callable, dataset: pads.Dataset, name: str, where: str, needed: list[str]) -> None:
    """Transform the first rows; the columns the recipe reads must be among those returned."""
    table = apply_transform(function, dataset.head(CHECK_ROWS), name, where)
    missing = [column for column in needed if column not in table.column_names]
    if missing:
        keys = " and ".join(f"data.{'feature' if c == needed[0] else 'label'}_column {c!r}" for c in missing)
        raise UserError(f"data.transform {name} returned the columns {', '.join(table.column_names)}, which lack "
                        f"{keys}: return that column from the transform or set the key to one it returns")


def _write_all(function: Callable, datasets: dict[str, pads.Dataset], name: str,
               inputs: dict[str, tuple[str, str]], target: Path) -> None:
    """Every split, batch by batch, into a scratch folder renamed to ``target`` once complete
    (an interrupted pass is never reused)."""
    scratch = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        rows = {split: _write_split(function, dataset, name, inputs[split][1], scratch / f"{split}.parquet")
                for split, dataset in datasets.items()}
        record = {"transform": name, "inputs": {split: inputs[split][1] for split in datasets}, "rows": rows}
        (scratch / DONE_FILE).write_text(json.dumps(record, indent=2))
        if target.exists():  # written meanwhile by another run with the same fingerprint: the same rows
            shutil.rmtree(scratch)
        else:
            os.replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _write_split(function: Callable, dataset: pads.Dataset, name: str, where: str, path: Path) -> int:
    writer = None
    rows = 0
    try:
        for batch in dataset.to_batches(batch_size=BATCH_ROWS):
            if batch.num_rows == 0:
                continue
            table = apply_transform(function, pa.Table.from_batches([batch]), name, where)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(_same_schema(table, writer.schema, name, where))
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def _same_schema(table: pa.Table, schema: pa.Schema, name: str, where: str) -> pa.Table:
    """A later batch's columns, in the first batch's order and types."""
    if table.schema.equals(schema):
        return table
    try:
        return table.select(schema.names).cast(schema)
    except (KeyError, pa.ArrowException, ValueError) as exc:
        raise UserError(f"data.transform {name} returned columns {table.schema.names} of other types on a later "
                        f"batch of {where} than on the first ({schema.names}; {str(exc).splitlines()[0]}): return "
                        "the same columns and types for every batch") from None
