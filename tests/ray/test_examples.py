"""Every recipe in examples/ runs at smoke size; the quickstart reaches its accuracy floor."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayeffi.recipe import load_recipe
from rayeffi.run import run_recipe

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
QUICKSTART_FLOOR = 0.95


def test_there_are_examples():
    assert {"quickstart.yaml"} <= {path.name for path in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_at_smoke_size(path, tmp_path):
    recipe = load_recipe(path, smoke=True)
    summary = run_recipe(recipe, tmp_path)
    assert summary["status"] == "complete"
    assert [s["name"] for s in summary["stages"]] == [s.name for s in recipe.stages]
    for stage in summary["stages"]:
        assert Path(stage["checkpoint"]).is_file()
        assert 0.0 <= stage["metrics"]["val_accuracy"] <= 1.0
        assert len(stage["history"]) == recipe.stage(stage["name"]).epochs


def test_quickstart_reaches_its_accuracy_floor(tmp_path):
    summary = run_recipe(load_recipe(EXAMPLES[[p.name for p in EXAMPLES].index("quickstart.yaml")]), tmp_path)
    assert summary["stages"][0]["metrics"]["val_accuracy"] >= QUICKSTART_FLOOR
