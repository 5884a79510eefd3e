"""Tables as they are: numeric scalar columns (``f0 ... f11``, ``age``, ...) chosen as the features.

A table without a ``features`` list column (and without ``data.feature_column``) trains on
its numeric scalar columns, which ``data/columns.py: normalise`` stacks into the fixed-width
float32 ``features`` every worker reads. Which columns:

- ``data.feature_columns`` unset: every integer, float or boolean column except the label
  and ``data.exclude_columns``, in schema order; other columns are skipped (and said so by
  ``rayeffi validate``);
- ``data.feature_columns: [names or fnmatch globs]``: those, in the order given (a glob's
  matches in schema order, skipping the label, excluded and non-numeric columns); a name
  must be a numeric scalar column.

Every failure is a one-line ``UserError`` naming the file, the columns and the fix,
raised on the driver before Ray starts.
"""

from __future__ import annotations

import fnmatch
import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from rayeffi.errors import UserError
from rayeffi.recipe.sections import DataConfig


def is_scalar_number(value_type: pa.DataType) -> bool:
    """A column ``normalise`` can stack: integers, floats and booleans (cast to float32)."""
    return pa.types.is_integer(value_type) or pa.types.is_floating(value_type) or pa.types.is_boolean(value_type)


def select_feature_columns(schema: pa.Schema, label_column: str | None, config: DataConfig,
                           path) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """``(chosen columns, skipped (name, type) pairs)`` of a table's schema, as ``data`` asks."""
    types = {field.name: field.type for field in schema}
    _check_patterns_match(config.exclude_columns, schema.names, path, "data.exclude_columns")
    excluded = {name for pattern in config.exclude_columns for name in fnmatch.filter(schema.names, pattern)}
    candidates = [name for name in schema.names if name != label_column and name not in excluded]
    skipped = tuple((name, str(types[name])) for name in candidates if not is_scalar_number(types[name]))
    if config.feature_columns is None:
        chosen = [name for name in candidates if is_scalar_number(types[name])]
    else:
        _check_patterns_match(config.feature_columns, schema.names, path, "data.feature_columns")
        chosen = []
        for pattern in config.feature_columns:
            if _is_glob(pattern):
                chosen += [name for name in fnmatch.filter(candidates, pattern) if is_scalar_number(types[name])]
            else:
                _check_named_column(pattern, types[pattern], path)
                chosen.append(pattern)
        skipped = tuple((name, value_type) for name, value_type in skipped
                        if any(fnmatch.fnmatchcase(name, pattern) for pattern in config.feature_columns))
    chosen = tuple(dict.fromkeys(chosen))  # a column named twice (or by two globs) counts once
    if not chosen:
        asked = ("data.feature_columns " + ", ".join(config.feature_columns) if config.feature_columns is not None
                 else "the automatic selection")
        raise UserError(f"data {path}: {asked} leaves no numeric feature column besides the label "
                        f"{label_column!r} (columns: {describe_schema(schema)}): add numeric columns, "
                        "or set data.feature_column to a list column")
    return chosen, skipped


def check_columns_present(dataset: pads.Dataset, path, key: str, columns: tuple[str, ...]) -> None:
    """A validation file holds the chosen feature columns, each a numeric scalar."""
    types = {field.name: field.type for field in dataset.schema}
    missing = [name for name in columns if name not in types]
    if missing:
        raise UserError(f"{key} {path} lacks the feature column(s) {abbreviate(tuple(missing))} that data.path's "
                        f"rows train on (columns: {abbreviate(tuple(dataset.schema.names), keep=24)}): add them, or "
                        "leave them out with data.exclude_columns")
    wrong = [f"{name} ({types[name]})" for name in columns if not is_scalar_number(types[name])]
    if wrong:
        raise UserError(f"{key} {path}: feature column(s) {', '.join(wrong)} are not numbers as in data.path: "
                        "fix their type")


def check_finite_columns(dataset: pads.Dataset, path, columns: tuple[str, ...]) -> None:
    """Every chosen column present and finite in every row, counted per column.

    Read batch by batch, so a large table is never held in memory at once.
    """
    missing, non_finite = dict.fromkeys(columns, 0), dict.fromkeys(columns, 0)
    for batch in dataset.to_batches(columns=list(columns)):
        for name in columns:
            values = batch.column(name)
            missing[name] += values.null_count
            if pa.types.is_floating(values.type) and len(values):
                non_finite[name] += len(values) - values.null_count - (pc.sum(pc.is_finite(values)).as_py() or 0)
    bad = [f"{name}: {_counts(missing[name], non_finite[name])}" for name in columns
           if missing[name] or non_finite[name]]
    if bad:
        raise UserError(f"data {path}: feature columns hold missing or non-finite values ({'; '.join(bad)}); drop "
                        "or fill those rows before training, or leave the columns out with data.exclude_columns")


def describe_features(columns: tuple[str, ...], skipped: tuple[tuple[str, str], ...]) -> str:
    """One line for ``rayeffi validate``: ``12 columns f0..f11 (skipped: name (string))``."""
    text = f"{len(columns)} column{'s' if len(columns) != 1 else ''} {abbreviate(columns)}"
    if skipped:
        shown = [f"{name} ({value_type})" for name, value_type in skipped[:3]]
        more = f", +{len(skipped) - 3} more" if len(skipped) > 3 else ""
        text += f" (skipped: {', '.join(shown)}{more})"
    return text


def abbreviate(names: tuple[str, ...], keep: int = 6) -> str:
    """Column names, short: runs like ``f0, f1, ..., f11`` as ``f0..f11``; a long list cut in the middle."""
    parts: list[str] = []
    index = 0
    while index < len(names):
        end = index + 1
        while end < len(names) and _follows(names[end - 1], names[end]):
            end += 1
        parts.append(f"{names[index]}..{names[end - 1]}" if end - index >= 3 else ", ".join(names[index:end]))
        index = end
    tokens = ", ".join(parts).split(", ")
    if len(tokens) > keep:
        tokens = [*tokens[:keep - 2], f"... (+{len(tokens) - keep + 1})", tokens[-1]]
    return ", ".join(tokens)


def describe_schema(schema: pa.Schema, keep: int = 12) -> str:
    """``name type, ...`` of a schema, cut after ``keep`` columns."""
    shown = [f"{field.name} {field.type}" for field in schema][:keep]
    more = f", +{len(schema) - keep} more" if len(schema) > keep else ""
    return ", ".join(shown) + more


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def _follows(previous: str, name: str) -> bool:
    """``name`` is ``previous`` counted up by one (``f9`` -> ``f10``)."""
    a, b = _NUMBERED.match(previous), _NUMBERED.match(name)
    return bool(a and b and a.group(1) == b.group(1) and int(b.group(2)) == int(a.group(2)) + 1)


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def _check_patterns_match(patterns: tuple[str, ...], names: list[str], path, key: str) -> None:
    unmatched = [p for p in patterns if not (fnmatch.filter(names, p) if _is_glob(p) else p in names)]
    if unmatched:
        raise UserError(f"{key} {', '.join(map(repr, unmatched))} match(es) no column of {path} "
                        f"(columns: {abbreviate(tuple(names), keep=24)}): fix the name or pattern")


def _check_named_column(name: str, value_type: pa.DataType, path) -> None:
    # the label named as a feature is refused with the recipe (recipe/sections.py: DataConfig)
    if not is_scalar_number(value_type):
        raise UserError(f"data.feature_columns: column {name!r} of {path} is {value_type}, not a number: remove it, "
                        "or encode it as numbers first (a list column is data.feature_column, alone)")


def _counts(missing: int, non_finite: int) -> str:
    return ", ".join(part for part in (f"{missing} missing" if missing else "",
                                        f"{non_finite} NaN or inf" if non_finite else "") if part)
