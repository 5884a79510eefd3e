"""``rayeffi submit`` and ``rayeffi run --address`` against a real head: ``ray start --head`` on
free ports of 127.0.0.1.

The head uses token authentication (this Ray's default) with a token of its own, its
own temp dir, and is stopped by the PIDs it started (never ``ray stop``). A client without
the token, or with another, gets one ``error:`` line; the token is written nowhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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


def _files_holding(folder: Path, secret: str) -> list[Path]:
    """The files under ``folder`` whose bytes hold ``secret``."""
    return [path for path in folder.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]


def _uploaded_packages(head) -> list[Path]:
    """What the head unpacked of the packages clients uploaded (its runtime_resources)."""
    return [path for path in head.temp_dir.glob("session_*/runtime_resources/*") if path.is_dir()]


def _without_auth(**env) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}, **env}


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
    token = head.env["RAY_AUTH_TOKEN"]
    assert token not in done.stdout + done.stderr
    assert _files_holding(out, token) == []  # summary.json, progress, TensorBoard, checkpoints
    packages = _uploaded_packages(head)
    assert packages and all(_files_holding(package, token) == [] for package in packages)


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


def test_run_joins_a_token_authenticated_head_and_writes_the_token_nowhere(head, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "rayeffi", "run", "examples/quickstart.yaml", "--smoke",
                           "--address", head.gcs_address, "--out", str(out),
                           "--set", f"tracking.mlflow.tracking_uri=file:{out / 'mlruns'}"],
                          cwd=ROOT, env=_without_auth(**head.env), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["stages"][0]["num_workers"] == 2
    assert list((out / "mlruns").rglob("params")), "the MLflow run was recorded"
    token = head.env["RAY_AUTH_TOKEN"]
    assert token not in done.stdout + done.stderr
    assert _files_holding(out, token) == []  # summary.json, progress, TensorBoard, MLflow params, checkpoints


@pytest.mark.parametrize("auth, said", [
    ({}, "asks for a token and this client sent none (RAY_AUTH_MODE is not token here)"),
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "f" * 64}, "refused the token in RAY_AUTH_TOKEN"),
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "TOKEN_FILE"}, "refused the token in RAY_AUTH_TOKEN_PATH"),
], ids=["none", "wrong", "wrong-file"])
def test_a_client_without_the_clusters_token_gets_one_line(head, tmp_path, auth, said):
    if auth.get("RAY_AUTH_TOKEN_PATH"):
        auth["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "token")
        (tmp_path / "token").write_text("e" * 64)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "rayeffi", "run", "examples/quickstart.yaml", "--smoke",
                           "--address", head.gcs_address, "--out", str(tmp_path / "run")],
                          cwd=ROOT, env=_without_auth(**auth), capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"error: --address {head.gcs_address}: the cluster {said}"), lines
    assert "export RAY_AUTH_MODE=token" in lines[0] and "RAY_AUTH_TOKEN_PATH" in lines[0]
    assert time.monotonic() - started < 60, "refused at once, not after Ray's retries"
    assert not (tmp_path / "run" / "summary.json").exists()  # before the run began
