"""The recipe's folder: its modules import and its relative paths resolve with no PYTHONPATH,
from any current folder (rayeffi/recipe/paths.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayeffi.data import builtin_digits_paths
from rayeffi.errors import UserError
from rayeffi.recipe import load_recipe
from rayeffi.recipe.paths import find_path, recipe_folders, worker_python_path

ROOT = Path(__file__).resolve().parents[2]

MODEL = """from torch import nn


def build(num_features, num_classes, image_shape=None, width=8):
    return nn.Sequential(nn.Linear(num_features, width), nn.Tanh(), nn.Linear(width, num_classes))


def half_accuracy(logits, targets):
    return {"val_half": 0.5}
"""

RECIPE = """data: {dataset: parquet, path: rows/train.parquet, val_path: rows/val.parquet}
model: {name: beside_model:build}
task: {name: classification, metrics: ["beside_model:half_accuracy"]}
scaling: {num_workers: 0}
stages: [{name: train, kind: train, epochs: 1}]
"""


@pytest.fixture
def recipe_dir(tmp_path):
    """A project folder: recipe.yaml, the model module beside it and its data under rows/."""
    folder = tmp_path / "project"
    (folder / "rows").mkdir(parents=True)
    train, val = (pq.read_table(path) for path in builtin_digits_paths())
    pq.write_table(train.slice(0, 128), folder / "rows" / "train.parquet")
    pq.write_table(val.slice(0, 32), folder / "rows" / "val.parquet")
    (folder / "beside_model.py").write_text(MODEL)
    (folder / "recipe.yaml").write_text(RECIPE)
    return folder


def _env_without_the_folder() -> dict[str, str]:
    """This checkout on PYTHONPATH (for rayeffi itself), nothing of the recipe's folder."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_validate_from_another_folder_imports_the_module_beside_the_recipe(recipe_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-m", "rayeffi", "validate", str(recipe_dir / "recipe.yaml")],
                          cwd=elsewhere, env=_env_without_the_folder(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "model beside_model:build" in done.stdout


def test_a_missing_module_is_one_error_line(recipe_dir, tmp_path):
    (recipe_dir / "beside_model.py").unlink()
    done = subprocess.run([sys.executable, "-m", "rayeffi", "validate", str(recipe_dir / "recipe.yaml")],
                          cwd=tmp_path, env=_env_without_the_folder(), capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "cannot import 'beside_model'" in lines[0], done.stderr


def test_relative_paths_resolve_against_the_recipe_folder_first(recipe_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows").mkdir()  # the same relative name in the current folder loses to the recipe's folder
    (tmp_path / "rows" / "train.parquet").write_bytes(b"not parquet")
    stage = load_recipe(recipe_dir / "recipe.yaml").stage("train")
    assert stage.data.path == str(recipe_dir / "rows" / "train.parquet")
    assert stage.data.val_path == str(recipe_dir / "rows" / "val.parquet")


def test_then_against_the_current_folder(recipe_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.pt").write_bytes(b"x")
    stage = load_recipe(recipe_dir / "recipe.yaml", ["stages.train.init_from=weights.pt"]).stage("train")
    assert stage.init_from.path == str(tmp_path / "weights.pt")


def test_a_missing_file_names_every_path_tried(recipe_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as caught:
        load_recipe(recipe_dir / "recipe.yaml", ["data.val_path=nowhere.parquet"])
    message = str(caught.value)
    assert message.startswith("stages.train.data.val_path: nowhere.parquet is not there")
    assert str(recipe_dir / "nowhere.parquet") in message and str(tmp_path / "nowhere.parquet") in message


def test_teacher_checkpoints_resolve_too(recipe_dir):
    (recipe_dir / "teacher.pt").write_bytes(b"x")
    text = RECIPE.replace("stages: [{name: train, kind: train, epochs: 1}]",
                          "stages: [{name: train, kind: train, epochs: 1, techniques: "
                          "[{name: distill, teachers: [{checkpoint: teacher.pt, model: {name: mlp}}]}]}]")
    (recipe_dir / "kd.yaml").write_text(text)
    stage = load_recipe(recipe_dir / "kd.yaml").stage("train")
    assert stage.techniques[0].teachers[0].checkpoint == str(recipe_dir / "teacher.pt")


def test_stage_names_and_absolute_paths_stay(recipe_dir):
    text = RECIPE.replace("stages: [{name: train, kind: train, epochs: 1}]",
                          "stages: [{name: a, kind: train, epochs: 1}, {name: b, kind: train, epochs: 1, init_from: a},"
                          " {name: c, kind: train, epochs: 1, init_from: previous}]")
    (recipe_dir / "two.yaml").write_text(text)
    recipe = load_recipe(recipe_dir / "two.yaml")
    assert [s.init_from and s.init_from.path for s in recipe.stages] == [None, "a", "previous"]
    assert find_path("/abs/x.parquet", ("/nowhere",), "k") == "/abs/x.parquet"
    assert find_path("s3://bucket/x.parquet", ("/nowhere",), "k") == "s3://bucket/x.parquet"


def test_a_dict_recipe_resolves_against_the_current_folder(recipe_dir, monkeypatch):
    monkeypatch.chdir(recipe_dir)
    raw = {"data": {"dataset": "parquet", "path": "rows/train.parquet"}, "stages": [{"name": "t", "kind": "train"}]}
    recipe = load_recipe(raw)
    assert recipe.folders == (str(recipe_dir),)
    assert recipe.stage("t").data.path == str(recipe_dir / "rows" / "train.parquet")
    assert load_recipe(recipe).stage("t").data.path == recipe.stage("t").data.path  # a Recipe keeps its folders


def test_folders_and_the_workers_python_path(recipe_dir, monkeypatch):
    monkeypatch.chdir(recipe_dir.parent)
    monkeypatch.setenv("PYTHONPATH", "/inherited")
    folders = recipe_folders("project/recipe.yaml")
    assert folders == (str(recipe_dir), str(recipe_dir.parent))
    assert recipe_folders(recipe_dir / "recipe.yaml") == folders
    # absolute first; the recipe's folder relative to the current one (a submitted job's workers); then what the
    # node's Ray gives its workers, expanded there (a joined cluster's own PYTHONPATH is kept, not replaced)
    assert worker_python_path(folders).split(os.pathsep) == [*folders, "project", "${PYTHONPATH}"]
