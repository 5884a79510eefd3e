"""``rayeffi submit`` against a real head: ``ray start --head`` on free ports of 127.0.0.1.

The head uses token authentication (this Ray's default) with a token of its own, its
own temp dir, and is stopped by the PIDs it started (never ``ray stop``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.ray_head import start_head

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def head(own_ray):
    head = start_head(num_cpus=3)
    yield head
    head.stop()


def _submit(head, *args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "rayeffi", "submit", *args, "--address", head.dashboard_url],
                          cwd=cwd, env={**os.environ, **head.env}, capture_output=True, text=True, timeout=400)


def test_submitted_quickstart_succeeds_and_writes_its_summary(head, tmp_path):
    out = tmp_path / "run"
    done = _submit(head, "examples/quickstart.yaml", "--smoke", "--out", str(out), "--wait")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("uploading ")  # submit says what it sends before it submits
    job_id = next(line for line in lines if line.startswith("raysubmit_"))
    assert f"job {job_id}: SUCCEEDED" in done.stdout
    assert "[train] epoch 2:" in done.stdout  # the driver's epoch lines, streamed from the head
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["storage"] == str(out / "ray")
    (stage,) = summary["stages"]
    assert stage["num_workers"] == 2 and [row["epoch"] for row in stage["history"]] == [1, 2]
    assert stage["restarts"] == [] and Path(stage["checkpoint"]).is_file()
    assert 0.0 <= stage["metrics"]["val_accuracy"] <= 1.0


def test_a_failing_job_makes_submit_exit_nonzero(head, tmp_path):
    """The data file is too large to upload, so the job's driver cannot find it and fails."""
    (tmp_path / "data").mkdir()
    with open(tmp_path / "data/train.parquet", "wb") as handle:
        handle.truncate(17 * 2**20)
    (tmp_path / "recipe.yaml").write_text(
        "data: {dataset: parquet, path: data/train.parquet, val_fraction: 0.2}\n"
        "stages: [{name: train, kind: train, epochs: 1}]\n")
    done = _submit(head, "recipe.yaml", "--out", str(tmp_path / "run"), "--wait", cwd=tmp_path)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "left out (17.0 MiB, over 16.0 MiB; put it on shared storage): data/train.parquet" in done.stdout
    assert "data.path: data/train.parquet is not there" in done.stdout  # the driver's own one-line error, from the job's log
    assert ": FAILED" in done.stdout.splitlines()[-1]
