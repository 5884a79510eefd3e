"""Tables as they are: numeric scalar columns become the features (data/tables.py, data/columns.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rayeffi.cli import main
from rayeffi.data.columns import FEATURES, ColumnLayout, normalise
from rayeffi.data.sources import resolve_source, sample_rows
from rayeffi.data.tables import abbreviate, describe_features, select_feature_columns
from rayeffi.errors import UserError
from rayeffi.models import build_model
from rayeffi.parallel import STRATEGIES
from rayeffi.precision import Precision
from rayeffi.recipe import DataConfig, ModelConfig
from rayeffi.recipe.sections import TaskConfig
from rayeffi.worker.build import assemble
from rayeffi.worker.step import train_step


def _matrix(column) -> np.ndarray:
    array = column.combine_chunks()
    return np.asarray(array.flatten()).reshape(len(array), array.type.list_size)


def _wide(rows=200, seed=0, num_features=12):
    """``f0 ... f11`` floats (one an integer column), a string column and an integer ``target`` from a linear rule."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, num_features))
    target = np.argmax(x @ rng.normal(size=(num_features, 3)), axis=1)
    columns = {f"f{i}": x[:, i] for i in range(num_features)}
    columns["f5"] = np.round(x[:, 5] * 4).astype(np.int32)  # an integer feature, cast to float32
    columns["name"] = [f"row{i}" for i in range(rows)]
    columns["target"] = target.astype(np.int64)
    return pa.table(columns)


def _as_list_column(table: pa.Table, names) -> pa.Table:
    """The same numbers as one ``features`` fixed-size list column (float64 values, cast like scalars)."""
    matrix = np.column_stack([table[name].to_numpy().astype(np.float64) for name in names])
    features = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), len(names))
    return pa.table({FEATURES: features, "target": table["target"]})


def _write(path, table):
    pq.write_table(table, path)
    return str(path)


def _config(path, **data):
    return DataConfig(dataset="parquet", path=str(path), label_column=data.pop("label_column", "target"),
                      batch_size=data.pop("batch_size", 8), **data)


def test_normalise_stacks_scalar_columns_golden_and_as_a_list_column():
    table = pa.table({"a": pa.array([1.5, -2.25, 1e-8], pa.float64()), "b": pa.array([3, -4, 7], pa.int32()),
                      "c": pa.array([True, False, True]), "d": pa.array([0.1, 0.2, 0.3], pa.float32()),
                      "label": pa.array([0, 1, 2], pa.int8())})
    layout = ColumnLayout(FEATURES, "label", "rows", 3, feature_columns=("d", "a", "b", "c"))
    out = normalise(table, layout)
    assert out.schema.names == ["features", "label"]
    assert out["features"].type == pa.list_(pa.float32(), 4) and out["label"].type == pa.int64()
    golden = np.array([[0.1, 1.5, 3, 1], [0.2, -2.25, -4, 0], [0.3, 1e-8, 7, 1]], dtype=np.float32)
    np.testing.assert_array_equal(_matrix(out["features"]), golden)
    assert out["label"].to_pylist() == [0, 1, 2]
    # the same numbers in one list column normalise to exactly the same bytes
    as_list = pa.table({"x": pa.array([[0.1, 1.5, 3, 1], [0.2, -2.25, -4, 0], [0.30000001192092896, 1e-8, 7, 1]]),
                        "label": table["label"]})
    listed = normalise(as_list, ColumnLayout("x", "label", "rows", 4))
    assert listed["features"].combine_chunks().equals(out["features"].combine_chunks())
    regression = normalise(table, ColumnLayout(FEATURES, "a", "regression", 2, 1, feature_columns=("b", "c")))
    assert _matrix(regression["label"]).tolist() == [[1.5], [-2.25], [np.float32(1e-8)]]
    assert normalise(table.slice(0, 0), layout)["features"].type == pa.list_(pa.float32(), 4)  # an empty batch


def test_a_wide_table_normalises_exactly_like_its_list_column(tmp_path):
    table = _wide()
    names = [f"f{i}" for i in range(12)]
    scalars = resolve_source(_config(_write(tmp_path / "s.parquet", table)), 0, tmp_path)
    listed = resolve_source(_config(_write(tmp_path / "l.parquet", _as_list_column(table, names))), 0, tmp_path)
    assert scalars.layout.feature_columns == tuple(names) and scalars.skipped_columns == (("name", "string"),)
    assert scalars.info == listed.info and scalars.info.num_features == 12 and scalars.info.num_classes == 3
    batch = normalise(table, scalars.columns())
    assert batch.equals(normalise(pq.read_table(tmp_path / "l.parquet"), listed.columns()))
    (features, labels, named), (list_features, list_labels, list_named) = sample_rows(scalars, 5), sample_rows(listed, 5)
    assert torch.equal(features, list_features) and torch.equal(labels, list_labels) and named == list_named == {}


def test_training_steps_on_scalar_columns_match_the_list_column_exactly(tmp_path):
    table = _wide(rows=64)
    names = [f"f{i}" for i in range(12)]
    sources = [resolve_source(_config(_write(tmp_path / f"{i}.parquet", t)), 0, tmp_path)
               for i, t in enumerate((table, _as_list_column(table, names)))]
    weights = []
    for source in sources:
        features, labels, _ = sample_rows(source, 64)  # normalise's output: what Ray Data hands the workers
        torch.manual_seed(0)
        parts = assemble(build_model(ModelConfig(hidden_sizes=(16,)), source.info), STRATEGIES["data_parallel"](),
                         Precision(), lambda model: torch.optim.SGD(model.parameters(), lr=0.1))
        losses = [train_step(parts, features[i:i + 16], labels[i:i + 16]).item() for i in range(0, 64, 16)]
        weights.append([p.detach().clone() for p in parts.model.parameters()])
    assert losses[-1] < losses[0] * 1.5  # finite, a real step
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_automatic_selection_exclusion_and_globs():
    schema = pa.schema([("id", pa.int64()), ("b2", pa.float32()), ("name", pa.string()), ("b10", pa.float64()),
                        ("flag", pa.bool_()), ("tags", pa.list_(pa.int64())), ("y", pa.int64()), ("a1", pa.int8())])

    def select(**data):
        return select_feature_columns(schema, "y", DataConfig(dataset="parquet", path="p", label_column="y", **data),
                                      "p")

    assert select() == (("id", "b2", "b10", "flag", "a1"), (("name", "string"), ("tags", "list<item: int64>")))
    assert select(exclude_columns=["id", "fl*"])[0] == ("b2", "b10", "a1")
    # in the order given; a glob's matches in schema order; a column counted once
    assert select(feature_columns=["a1", "b*", "b2"])[0] == ("a1", "b2", "b10")
    assert select(feature_columns=["*"], exclude_columns=["id"]) == (
        ("b2", "b10", "flag", "a1"), (("name", "string"), ("tags", "list<item: int64>")))  # "*" skips the label y


def test_validate_names_the_feature_columns_in_one_line(tmp_path, capsys):
    columns = {f"f{i}": np.arange(40.0) for i in range(12)}
    path = _write(tmp_path / "t.parquet", pa.table({**columns, "name": ["x"] * 40, "target": np.arange(40) % 2}))
    (tmp_path / "r.yaml").write_text(f"data: {{dataset: parquet, path: {path}, label_column: target, "
                                     "batch_size: 8}\nstages: [{name: s, kind: train, epochs: 1}]\n")
    assert main(["validate", str(tmp_path / "r.yaml")]) == 0
    assert "  features: 12 columns f0..f11 (skipped: name (string))" in capsys.readouterr().out.splitlines()


def test_wide_names_are_abbreviated():
    assert abbreviate(("f0", "f1", "f2", "g", "f4")) == "f0..f2, g, f4"
    assert abbreviate(tuple(f"px{i}" for i in range(784))) == "px0..px783"
    assert abbreviate(tuple("abcdefghij")) == "a, b, c, d, ... (+5), j"
    assert describe_features(("a",), tuple((f"s{i}", "string") for i in range(5))) == \
        "1 column a (skipped: s0 (string), s1 (string), s2 (string), +2 more)"


def test_regression_val_path_and_image_shape_with_scalar_columns(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(48, 4))
    table = pa.table({**{f"p{i}": x[:, i] for i in range(4)}, "y": x @ np.array([1.0, -2.0, 0.5, 0.0])})
    train, val = _write(tmp_path / "t.parquet", table), _write(tmp_path / "v.parquet", table.slice(0, 16))
    config = _config(train, val_path=val, label_column="y", image_shape=[1, 2, 2])
    source = resolve_source(config, 0, tmp_path, TaskConfig(name="regression"))
    info = source.info
    shape = (info.num_features, info.num_classes, info.image_shape, info.num_train, info.num_val)
    assert shape == (4, 1, (1, 2, 2), 48, 16)
    features, targets, _ = sample_rows(source, 3)
    np.testing.assert_array_equal(features.numpy(), x[:3].astype(np.float32))
    np.testing.assert_allclose(targets.numpy()[:, 0], table["y"].to_numpy()[:3], rtol=1e-6)
    with pytest.raises(UserError, match=r"image_shape \[1, 3, 3\] has 9 values"):
        resolve_source(_config(train, label_column="y", image_shape=[1, 3, 3]), 0, tmp_path,
                       TaskConfig(name="regression"))


def _bad_tables(tmp_path):
    good = _wide(rows=40)
    path = _write(tmp_path / "good.parquet", good)
    nan = good.set_column(3, "f3", pa.array([None, None] + [1.0] * 38)).set_column(
        7, "f7", pa.array([np.nan] + [1.0] * 38 + [np.inf]))
    only_label = pa.table({"name": ["a"] * 40, "target": [0, 1] * 20})
    return {
        "pattern matches nothing": (dict(path=path, feature_columns=["g*", "f1"]),
                                    "data.feature_columns 'g*' match(es) no column of", "f0..f11, name, target"),
        "exclusion matches nothing": (dict(path=path, exclude_columns=["idx"]), "data.exclude_columns 'idx'",
                                      "f0..f11"),
        "non-numeric column asked for": (dict(path=path, feature_columns=["f0", "name"]),
                                         "column 'name' of", "is string, not a number"),
        "only the label is numeric": (dict(path=_write(tmp_path / "o.parquet", only_label)),
                                      "leaves no numeric feature column besides the label 'target'", "name string"),
        "nulls and non-finite values": (dict(path=_write(tmp_path / "n.parquet", nan)),
                                        "f3: 2 missing; f7: 2 NaN or inf", "data.exclude_columns"),
        "val_path lacks a column": (dict(path=path, val_path=_write(tmp_path / "v.parquet", good.drop(["f2", "f9"]))),
                                    "lacks the feature column(s) f2, f9", "v.parquet"),
        "a scalar column as feature_column": (dict(path=path, feature_column="f0"), "column 'f0' is double",
                                              "leave data.feature_column out"),
    }


def test_bad_tables_are_one_line_errors_naming_file_columns_and_fix(tmp_path):
    for name, (data, *expected) in _bad_tables(tmp_path).items():
        with pytest.raises(UserError) as caught:
            resolve_source(_config(**data), 0, tmp_path)
        message = str(caught.value)
        assert "\n" not in message and all(part in message for part in expected), (name, message)


@pytest.mark.parametrize("data, expected", [
    (dict(feature_column="x", feature_columns=["f0"]), "both given"),
    (dict(exclude_columns=["f0"], feature_column="x"), "both given"),
    (dict(feature_columns=["f*", "target"]), "the label column"),
    (dict(feature_columns=[]), "is empty"),
])
def test_recipe_level_feature_choices_are_refused(data, expected):
    with pytest.raises(ValueError, match=expected):
        DataConfig(dataset="parquet", path="p", label_column="target", **data)


def test_finite_counts_add_up_batch_by_batch(tmp_path):
    values = np.ones(100)
    values[[5, 55, 95]] = np.nan  # one in each of three row groups
    pq.write_table(pa.table({"a": values, "b": np.ones(100), "target": np.arange(100) % 2}), tmp_path / "g.parquet",
                   row_group_size=10)
    with pytest.raises(UserError, match=r"\(a: 3 NaN or inf\)"):
        resolve_source(_config(tmp_path / "g.parquet"), 0, tmp_path)


def _null_list_table(fixed: bool, column: str) -> pa.Table:
    rows = [[0.5, 1.0, 2.0]] * 40
    rows[3] = None
    value_type = pa.list_(pa.float32(), 3) if fixed else pa.list_(pa.float32())
    return pa.table({column: pa.array(rows, value_type), "label": pa.array([i % 2 for i in range(40)])})


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("fixed", [True, False])
@pytest.mark.parametrize("column", ["features", "x"])
def test_a_null_feature_list_is_one_error_line(tmp_path, capsys, command, fixed, column, monkeypatch):
    monkeypatch.setattr("rayeffi.driver.run.start_ray", lambda *a, **k: pytest.fail("Ray must not start"))
    path = _write(tmp_path / "n.parquet", _null_list_table(fixed, column))
    named = ", feature_column: x" if column == "x" else ""
    (tmp_path / "r.yaml").write_text(f"data: {{dataset: parquet, path: {path}, batch_size: 8{named}}}\n"
                                     "stages: [{name: s, kind: train, epochs: 1}]\n")
    code = main([command, str(tmp_path / "r.yaml"), *(["--out", str(tmp_path / "out")] if command == "run" else [])])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert f"column {column!r}" in lines[0] and "n.parquet" in lines[0] and "drop or fill those rows" in lines[0]


def test_column_choices_only_where_rows_of_numbers_are_read(tmp_path):
    with pytest.raises(ValueError, match="not of dataset 'digits'"):
        DataConfig(dataset="digits", exclude_columns=["x"])
    path = _write(tmp_path / "t.parquet", pa.table({"ids": pa.array([[1, 2, 3]] * 40)}))
    with pytest.raises(UserError, match="task language_modeling reads one token column: set data.feature_column"):
        resolve_source(_config(path, feature_columns=["ids"]), 0, tmp_path, TaskConfig(name="language_modeling"))
