"""rayeffi init writes a recipe and a model file that validate as they are, from any folder;
rayeffi schema prints the recipe's JSON Schema."""

from __future__ import annotations

import json
import subprocess
import sys

from rayeffi.cli import main


def test_init_writes_a_starter_that_validates_from_another_folder(tmp_path, capsys):
    assert main(["init", str(tmp_path / "starter")]) == 0
    assert {p.name for p in (tmp_path / "starter").iterdir()} == {"recipe.yaml", "my_model.py"}
    assert "next: rayeffi run" in capsys.readouterr().out
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-m", "rayeffi", "validate", str(tmp_path / "starter" / "recipe.yaml")],
                          cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "train" in done.stdout
    assert main(["init", str(tmp_path / "starter")]) == 2  # never replaces a file
    assert "already exists" in capsys.readouterr().err


def test_schema_is_json_schema_naming_every_section(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"data", "model", "optimizer", "stages", "scaling", "precision"} <= set(schema["properties"])


def test_the_starter_runs_at_smoke_size_in_local_mode(tmp_path, monkeypatch):
    assert main(["init", str(tmp_path / "starter")]) == 0
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the recipe's folder goes on the driver's import path
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "starter" / "recipe.yaml"), "--smoke", "--set", "scaling.num_workers=0",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["stages"][0]["metrics"]["val_accuracy"] > 0.5
