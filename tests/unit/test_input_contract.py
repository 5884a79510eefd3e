"""The input contract, fuzzed: every malformed recipe or dataset exits 2 with one ``error:`` line.

Cases are generated from a small grammar of mistakes applied to a valid base recipe
and a valid Parquet dataset: a wrong type, a missing key, a duplicate key, an
out-of-range value, a wrong column type, non-finite or null values, too few rows.
Ray is never started: ``start_ray`` is replaced by a function that fails the test, so a
mistake that slips through validation shows up as a test failure, not a training run.
"""

from __future__ import annotations

import itertools
import math
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rayeffi.cli import main

ROWS, WIDTH = 80, 4

BASE = {
    "name": "fuzz",
    "data": {"dataset": "parquet", "path": "PARQUET", "batch_size": 16},
    "model": {"name": "mlp", "hidden_sizes": [8]},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 1}},
    "stages": [{"name": "train", "kind": "train", "epochs": 2}],
}

# (dotted key, a value of the wrong type, an out-of-range value)
FIELDS = [
    ("optimizer.lr", "fast", -0.1),
    ("optimizer.momentum", [0.9], 1.5),
    ("data.batch_size", "big", 0),
    ("data.val_fraction", {"a": 1}, 1.0),
    ("scaling.num_workers", "two", -3),
    ("model.hidden_sizes", "wide", [0]),
    ("model.dropout", "none", 1.0),
    ("stages.0.epochs", "many", 0),
    ("optimizer.schedule.gamma", "x", 2.0),
    ("scaling.max_failures", "often", -2),
]
REQUIRED = ["stages", "stages.0.name", "data.path"]
NON_FINITE = [math.inf, -math.inf, math.nan]


def _set(raw, dotted, value):
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _delete(raw, dotted):
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    del node[last]


def _yaml(raw) -> str:
    return yaml.safe_dump(raw, sort_keys=False)


def _mutate(kind: str, key: str, value=None):
    def apply(raw):
        if kind == "delete":
            _delete(raw, key)
        else:
            _set(raw, key, value)
        return _yaml(raw)
    return apply


def _duplicate(section: str):
    """The section's first key written a second time, as a hand edit would."""
    def apply(raw):
        text = _yaml(raw)
        if section == "top":
            return text + "optimizer: {lr: 0.5}\n"
        return text.replace("  epochs: 2\n", "  epochs: 2\n  epochs: 5\n")
    return apply


def recipe_mistakes() -> dict[str, object]:
    cases: dict[str, object] = {}
    for key, wrong_type, out_of_range in FIELDS:
        cases[f"wrong type {key}"] = _mutate("set", key, wrong_type)
        cases[f"out of range {key}"] = _mutate("set", key, out_of_range)
    for key in REQUIRED:
        cases[f"missing {key}"] = _mutate("delete", key)
    for (key, *_), value in itertools.product(FIELDS[:3], NON_FINITE):
        cases[f"non-finite {key}={value}"] = _mutate("set", key, value)
    cases["duplicate top-level key"] = _duplicate("top")
    cases["duplicate stage key"] = _duplicate("stage")
    cases["unknown key"] = _mutate("set", "optimizer.learning_rate", 0.1)
    cases["GPU resources"] = _mutate("set", "scaling.resources_per_worker", {"CPU": 1, "GPU": 1})
    cases["batch above rows"] = _mutate("set", "data.batch_size", 4096)
    return cases


def _write_data(path, features=None, labels=None, feature_type=None):
    features = features if features is not None else [[0.5] * WIDTH for _ in range(ROWS)]
    labels = labels if labels is not None else [i % 3 for i in range(ROWS)]
    column = pa.array(features, feature_type or pa.list_(pa.float32(), WIDTH))
    pq.write_table(pa.table({"features": column, "label": pa.array(labels)}), path)


def _poison(value, where="feature"):
    """A dataset whose row 7 holds ``value`` in its features (or its label)."""
    def write(path):
        features = [[0.5] * WIDTH for _ in range(ROWS)]
        labels = [i % 3 for i in range(ROWS)]
        if where == "feature":
            features[7][2] = value
        elif where == "row":
            features[7] = value
        else:
            labels[7] = value
        # a variable-length list column: pyarrow cannot build a null row of a fixed-size one from Python
        _write_data(path, features, labels, pa.list_(pa.float32()) if where == "row" else None)
    return write


DATA_MISTAKES = {
    "feature NaN": _poison(math.nan),
    "feature inf": _poison(math.inf),
    "feature -inf": _poison(-math.inf),
    "feature null value": _poison(None),
    "feature null row": _poison(None, "row"),
    "label null": _poison(None, "label"),
    "feature column of strings": lambda path: _write_data(
        path, [["a"] * WIDTH for _ in range(ROWS)], feature_type=pa.list_(pa.string(), WIDTH)),
    "label column of floats": lambda path: _write_data(path, labels=[0.5] * ROWS),
    "ragged feature rows": lambda path: _write_data(
        path, [[0.5] * (WIDTH + i % 2) for i in range(ROWS)], feature_type=pa.list_(pa.float32())),
    "too few rows for one global batch": lambda path: _write_data(
        path, [[0.5] * WIDTH] * 10, [0, 1] * 5),
}


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a malformed input reached Ray")
    monkeypatch.setattr("rayeffi.driver.run.start_ray", refuse)


def _assert_contract(args, tmp_path, capsys):
    code = main([*args, "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize("case", sorted(recipe_mistakes()))
def test_recipe_mistake_exits_2_with_one_line(case, tmp_path, capsys, no_ray):
    _write_data(tmp_path / "data.parquet")
    raw = yaml.safe_load(_yaml(BASE).replace("PARQUET", str(tmp_path / "data.parquet")))
    (tmp_path / "recipe.yaml").write_text(recipe_mistakes()[case](raw))
    _assert_contract(["run", str(tmp_path / "recipe.yaml")], tmp_path, capsys)


@pytest.mark.parametrize("case", sorted(DATA_MISTAKES))
def test_data_mistake_exits_2_with_one_line(case, tmp_path, capsys, no_ray):
    DATA_MISTAKES[case](tmp_path / "data.parquet")
    (tmp_path / "recipe.yaml").write_text(_yaml(BASE).replace("PARQUET", str(tmp_path / "data.parquet")))
    line = _assert_contract(["run", str(tmp_path / "recipe.yaml")], tmp_path, capsys)
    assert "data.parquet" in line  # the file is named


def test_random_combinations_of_mistakes(tmp_path, capsys, no_ray):
    """Two mistakes at once, drawn at a fixed seed: still one line, exit 2."""
    _write_data(tmp_path / "data.parquet")
    mistakes = recipe_mistakes()
    rng = random.Random(17)
    for first, second in (rng.sample(sorted(mistakes), 2) for _ in range(12)):
        raw = yaml.safe_load(_yaml(BASE).replace("PARQUET", str(tmp_path / "data.parquet")))
        text = mistakes[first](raw)
        try:
            text = mistakes[second](yaml.safe_load(text))
        except (KeyError, IndexError, TypeError, yaml.YAMLError):
            pass  # the first mistake removed what the second edits (or made the YAML unreadable to it)
        (tmp_path / "recipe.yaml").write_text(text)
        _assert_contract(["run", str(tmp_path / "recipe.yaml")], tmp_path, capsys)


def test_base_recipe_is_valid(tmp_path, capsys, monkeypatch):
    """The grammar's starting point passes every check (so each case fails for its own mistake)."""
    _write_data(tmp_path / "data.parquet")
    (tmp_path / "recipe.yaml").write_text(_yaml(BASE).replace("PARQUET", str(tmp_path / "data.parquet")))

    class Reached(Exception):
        pass

    def reached(*args, **kwargs):
        raise Reached
    monkeypatch.setattr("rayeffi.driver.run.start_ray", reached)
    with pytest.raises(Reached):
        main(["run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out")])


def test_duplicate_key_names_key_and_lines(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("optimizer: {lr: 0.1}\nstages: [{name: t, kind: train}]\noptimizer: {lr: 9}\n")
    line = _assert_contract(["run", str(tmp_path / "r.yaml")], tmp_path, capsys)
    assert "key 'optimizer' appears twice" in line and "lines 1 and 3" in line


def test_empty_data_directory_says_no_parquet_files(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "r.yaml").write_text(_yaml(BASE).replace("PARQUET", str(tmp_path / "empty")))
    line = _assert_contract(["run", str(tmp_path / "r.yaml")], tmp_path, capsys)
    assert "holds no Parquet files" in line


def test_tune_metric_no_stage_reports(tmp_path, capsys):
    raw = yaml.safe_load(_yaml(BASE))
    raw["data"] = {"dataset": "digits"}
    raw["stages"][0]["tune"] = {"search_space": {"optimizer.lr": {"choice": [0.1]}}, "metric": "val_acc"}
    (tmp_path / "r.yaml").write_text(_yaml(raw))
    line = _assert_contract(["run", str(tmp_path / "r.yaml")], tmp_path, capsys)
    assert "'val_acc'" in line and "val_accuracy" in line
