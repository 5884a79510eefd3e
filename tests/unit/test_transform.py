"""``data.transform``: the driver's one pass over the user's rows (rayeffi/data/transform.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayeffi.data.sources import resolve_source, sample_rows
from rayeffi.data.transform import BATCH_ROWS, transformed_config
from rayeffi.errors import UserError
from rayeffi.recipe import load_recipe
from rayeffi.recipe.sections import DataConfig, TaskConfig

ROOT = Path(__file__).resolve().parents[2]

TRANSFORMS = '''
import pandas as pd
import pyarrow as pa


def lengths(batch):
    """Each text as [characters, words]; the label kept: a dict of columns."""
    texts = batch["text"].to_pylist()
    return {"features": [[float(len(t)), float(len(t.split()))] for t in texts], "label": batch["label"]}


def as_frame(batch):
    return pd.DataFrame(lengths(batch) | {"label": batch["label"].to_pylist()})


def as_table(batch):
    return pa.table(lengths(batch))


def boom(batch):
    raise ValueError("no tokenizer here")


def a_list(batch):
    return [1, 2]


def drops_a_row(batch):
    return pa.table(lengths(batch)).slice(1)


def renames(batch):
    return {"feats": lengths(batch)["features"], "label": batch["label"]}


def ragged(batch):
    return {"features": [[1.0]] * batch.num_rows, "label": [0]}


def changes_type(batch):
    label = batch["label"] if batch.num_rows == {rows} else [[value] for value in batch["label"].to_pylist()]
    return {"features": lengths(batch)["features"], "label": label}
'''.replace("{rows}", str(BATCH_ROWS))

TEXTS = ["a b", "ccc", "dd ee ff"]


@pytest.fixture
def rows(tmp_path, monkeypatch):
    """``tmp_path`` on the import path with the transforms above (module ``my_transforms``) and
    Parquet rows of ``text`` and ``label``: train.parquet (3 rows), val.parquet (2), big.parquet
    (BATCH_ROWS + 5: two batches)."""
    (tmp_path / "my_transforms.py").write_text(TRANSFORMS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_transforms", None)
    pq.write_table(pa.table({"text": TEXTS, "label": [0, 1, 1]}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"text": ["x y z w", "v"], "label": [1, 0]}), tmp_path / "val.parquet")
    num_big = BATCH_ROWS + 5
    pq.write_table(pa.table({"text": ["a b"] * num_big, "label": [0, 1] * (num_big // 2) + [0]}),
                   tmp_path / "big.parquet")
    return tmp_path


def _config(root: Path, transform: str, train: str = "train.parquet", val: str | None = "val.parquet") -> DataConfig:
    return DataConfig(dataset="parquet", path=str(root / train), val_path=val and str(root / val),
                      transform=f"my_transforms:{transform}", num_classes=2, batch_size=2,
                      feature_column="features")


@pytest.mark.parametrize("transform", ["lengths", "as_frame", "as_table"])
def test_golden_rows_from_each_kind_of_output(rows, transform):
    config = transformed_config(_config(rows, transform), rows / "out", TaskConfig())
    assert Path(config.path).parent.parent == rows / "out" / "transformed"
    train, val = pq.read_table(config.path).to_pydict(), pq.read_table(config.val_path).to_pydict()
    assert train == {"features": [[3.0, 2.0], [3.0, 1.0], [8.0, 3.0]], "label": [0, 1, 1]}
    assert val == {"features": [[7.0, 4.0], [1.0, 1.0]], "label": [1, 0]}


def test_the_checks_and_the_sample_rows_see_the_transformed_rows(rows):
    source = resolve_source(_config(rows, "lengths"), 0, rows / "out", TaskConfig())
    assert (source.info.num_features, source.info.num_classes, source.info.num_train) == (2, 2, 3)
    features, labels, named = sample_rows(source)
    assert features.tolist() == [[3.0, 2.0], [3.0, 1.0]] and labels.tolist() == [0, 1] and named == {}


def test_every_batch_of_a_large_file_is_written(rows):
    config = transformed_config(_config(rows, "lengths", "big.parquet", None), rows / "out", TaskConfig())
    written = pq.read_table(config.path)
    assert written.num_rows == BATCH_ROWS + 5 and config.val_path is None
    assert written["features"].to_pylist()[-1] == [3.0, 2.0]


def test_a_rerun_reuses_the_files_and_a_change_makes_new_ones(rows, monkeypatch):
    first = transformed_config(_config(rows, "lengths"), rows / "out", TaskConfig())

    def refuse(*args, **kwargs):
        raise AssertionError("the transform ran again")
    monkeypatch.setattr("rayeffi.data.transform._write_all", refuse)
    assert transformed_config(_config(rows, "lengths"), rows / "out", TaskConfig()) == first
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(rows))
    stat = os.stat(rows / "val.parquet")  # an input file changed: its modification time moves
    os.utime(rows / "val.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = transformed_config(_config(rows, "lengths"), rows / "out", TaskConfig())
    assert second.path != first.path
    (rows / "my_transforms.py").write_text(TRANSFORMS + "\n# edited\n")  # the transform's source changed
    sys.modules.pop("my_transforms", None)
    third = transformed_config(_config(rows, "lengths"), rows / "out", TaskConfig())
    assert third.path not in (first.path, second.path)
    assert sorted(p.name for p in (rows / "out" / "transformed").iterdir()) == sorted(
        Path(c.path).parent.name for c in (first, second, third))  # no partial folder left behind


@pytest.mark.parametrize(("transform", "says"), [
    ("boom", "data.transform my_transforms:boom failed on a batch of 2 rows of {train} (ValueError: no tokenizer here)"),
    ("a_list", "data.transform my_transforms:a_list returned a list: return a pyarrow Table, a dict of columns or"),
    ("drops_a_row", "data.transform my_transforms:drops_a_row returned 1 rows for a batch of 2 rows of {train}: it "
                    "must return one row per row"),
    ("renames", "data.transform my_transforms:renames returned the columns feats, label, which lack "
                "data.feature_column 'features': return that column"),
    ("ragged", "data.transform my_transforms:ragged returned columns pyarrow cannot read as a table"),
    ("nothing", "data.transform my_transforms:nothing: my_transforms has no function 'nothing'"),
])
def test_each_bad_transform_is_one_line_before_anything_is_written(rows, transform, says):
    with pytest.raises(UserError) as caught:
        transformed_config(_config(rows, transform), rows / "out", TaskConfig())
    assert str(caught.value).startswith(says.format(train=rows / "train.parquet")), caught.value
    assert "\n" not in str(caught.value)
    assert not any((rows / "out").glob("transformed/*"))


def test_a_later_batch_of_other_types_is_named(rows):
    with pytest.raises(UserError, match=r"returned columns \['features', 'label'\] of other types on a later batch"):
        transformed_config(_config(rows, "changes_type", "big.parquet", None), rows / "out", TaskConfig())
    assert not any((rows / "out").glob("transformed/*"))  # the partial pass is removed


def test_the_label_column_is_optional_for_a_language_model(rows):
    config = _config(rows, "renames").model_copy(update={"feature_column": "feats"})
    transformed_config(config, rows / "out", TaskConfig(name="language_modeling"))  # no label column needed
    with pytest.raises(UserError, match="lack data.label_column 'tag'"):
        transformed_config(config.model_copy(update={"label_column": "tag"}), rows / "out2", TaskConfig())


def test_recipe_keys():
    with pytest.raises(UserError, match="data.transform reads your Parquet rows, not dataset 'digits'"):
        load_recipe({"data": {"transform": "m:f"}, "stages": [{"name": "t", "kind": "train"}]})
    with pytest.raises(UserError, match="data.transform 'm.f' is not a 'package.module:function' path"):
        load_recipe({"data": {"dataset": "parquet", "path": "/x", "transform": "m.f"},
                     "stages": [{"name": "t", "kind": "train"}]})


def test_a_module_that_does_not_import_is_one_error_line_from_the_cli(tmp_path):
    pq.write_table(pa.table({"text": TEXTS, "label": [0, 1, 1]}), tmp_path / "rows.parquet")
    (tmp_path / "broken.py").write_text("import no_such_package_here\n")
    (tmp_path / "r.yaml").write_text("data: {dataset: parquet, path: rows.parquet, transform: broken:tokenise}\n"
                                     "stages: [{name: t, kind: train}]\n")
    done = subprocess.run([sys.executable, "-m", "rayeffi", "validate", str(tmp_path / "r.yaml")], cwd="/",
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: data.transform broken:tokenise: cannot import 'broken' (ModuleNotFoundError: "
                               "No module named 'no_such_package_here')"), lines[0]
