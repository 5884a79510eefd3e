"""The last bad inputs: each is one ``error:`` line and exit 2 from ``validate`` and ``run``, before Ray.

Null label rows, null token rows, rows of the wrong width in the validation file only, a
recipe that is not UTF-8, a recipe path that is a folder (null feature rows:
``test_tables.py``; YAML merge keys: ``test_yaml_merge.py``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayeffi.cli import main

ROWS = 40


def _features(width: int = 4) -> list:
    return [list(np.random.default_rng(i).random(width).astype("float32")) for i in range(ROWS)]


def _write(tmp_path, name: str, table: pa.Table) -> str:
    path = tmp_path / name
    pq.write_table(table, path)
    return str(path)


def _one_error_line(capsys, tmp_path, command: str, recipe) -> str:
    code = main([command, str(recipe), *(["--out", str(tmp_path / "out")] if command == "run" else [])])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, lines)
    return lines[0]


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    monkeypatch.setattr("rayeffi.driver.run.start_ray", lambda *a, **k: pytest.fail("Ray must not start"))


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_null_label_row(tmp_path, capsys, command):
    path = _write(tmp_path, "train.parquet", pa.table({"features": _features(),
                                                       "label": [None if i == 3 else i % 2 for i in range(ROWS)]}))
    (tmp_path / "r.yaml").write_text(f"data: {{dataset: parquet, path: {path}}}\nstages: [{{name: s, kind: train}}]\n")
    line = _one_error_line(capsys, tmp_path, command, tmp_path / "r.yaml")
    assert "train.parquet" in line and "label column 'label' has 1 missing values" in line


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_null_token_row(tmp_path, capsys, command):
    tokens = [list(np.random.default_rng(i).integers(0, 50, 16)) for i in range(ROWS)]
    tokens[5] = None
    path = _write(tmp_path, "text.parquet", pa.table({"tokens": pa.array(tokens, pa.list_(pa.int64()))}))
    (tmp_path / "r.yaml").write_text(
        f"data: {{dataset: parquet, path: {path}, feature_column: tokens, seq_len: 16}}\n"
        "task: {name: language_modeling}\nmodel: {name: lm}\nstages: [{name: s, kind: train}]\n")
    line = _one_error_line(capsys, tmp_path, command, tmp_path / "r.yaml")
    assert "text.parquet" in line and "column 'tokens' has missing rows or token ids" in line


@pytest.mark.parametrize("command", ["validate", "run"])
def test_rows_of_the_wrong_width_in_the_validation_file_only(tmp_path, capsys, command):
    train = _write(tmp_path, "train.parquet", pa.table({"features": _features(), "label": [i % 2 for i in range(ROWS)]}))
    rows = _features()
    rows[7] = [1.0, 2.0]
    val = _write(tmp_path, "val.parquet", pa.table({"features": rows, "label": [i % 2 for i in range(ROWS)]}))
    (tmp_path / "r.yaml").write_text(f"data: {{dataset: parquet, path: {train}, val_path: {val}}}\n"
                                     "stages: [{name: s, kind: train}]\n")
    line = _one_error_line(capsys, tmp_path, command, tmp_path / "r.yaml")
    assert "val.parquet" in line and "have 2 to 4 values; every row needs the same" in line


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_recipe_that_is_not_utf8(tmp_path, capsys, command):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("stages: [{name: s, kind: train}]\nname: caf\u00e9\n".encode("latin-1"))
    line = _one_error_line(capsys, tmp_path, command, recipe)
    assert "latin1.yaml: line 2: byte 0xe9 is not UTF-8: save the recipe as UTF-8" in line


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_recipe_path_that_is_a_folder(tmp_path, capsys, command):
    (tmp_path / "recipe.yaml").mkdir()
    line = _one_error_line(capsys, tmp_path, command, tmp_path / "recipe.yaml")
    assert "recipe.yaml is a folder: give the path of a YAML recipe file in it" in line


def test_a_utf8_recipe_with_a_byte_order_mark_loads(tmp_path, capsys):
    recipe = tmp_path / "bom.yaml"
    recipe.write_bytes(b"\xef\xbb\xbfstages: [{name: s, kind: train, epochs: 1}]\n")
    assert main(["validate", str(recipe)]) == 0, capsys.readouterr().err
