"""The console script end to end: its own private Ray, summary.json, TensorBoard files, the report.

In local mode (the worker loop in the driver): the console script driving Ray Train workers,
through Ctrl-C and a killed driver too, is tests/ray/test_supervision.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("own_ray")]

ROOT = Path(__file__).resolve().parents[2]


def test_run_then_report(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "rayeffi", "run", str(ROOT / "examples/quickstart.yaml"), "--smoke",
         "--set", "stages.train.epochs=2",
         "--set", "scaling.num_workers=0", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    epoch_lines = [line for line in done.stdout.splitlines() if line.startswith("[train] epoch")]
    assert [line.split(":")[0] for line in epoch_lines] == ["[train] epoch 1", "[train] epoch 2"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe"]["stages"][0]["data"]["max_samples"] == 512
    assert summary["stages"][0]["kind"] == "train" and summary["stages"][0]["wall_s"] > 0

    report = subprocess.run([sys.executable, "-m", "rayeffi", "report", str(out)], capture_output=True, text=True,
                            timeout=120)
    assert report.returncode == 0, report.stderr
    png = out / "report" / "train.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out / "report" / "index.html") in report.stdout.splitlines()
    assert any((out / "tensorboard" / "train").glob("events.out.tfevents.*"))  # on by default


def test_workers_import_the_modules_beside_the_recipe(tmp_path):
    """``examples/text_topics.yaml`` run from another folder with no PYTHONPATH to its modules: its
    transform (the driver) and its model (a Ray Train worker) import from the recipe's folder, and
    its relative data paths resolve there."""
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "rayeffi", "run", str(ROOT / "examples/text_topics.yaml"), "--smoke",
         "--set", "scaling.num_workers=1", "--set", "data.batch_size=16", "--out", str(out)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    stage = summary["stages"][0]
    assert stage["devices"] and stage["metrics"]["val_accuracy"] > 0.6  # 4 topics: chance is 0.25
    assert summary["recipe"]["stages"][0]["data"]["path"] == str(ROOT / "examples/text_topics/train.parquet")
    transformed = list((out / "data" / "transformed").glob("*/train.parquet"))
    assert len(transformed) == 1 and pq.read_table(transformed[0]).column_names == ["input_ids", "label"]
