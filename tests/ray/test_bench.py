"""Every ``rayeffi bench`` finishes in its quickest mode: exit 0, its figures printed, no
traceback, and no process of its own left behind (``slow``: about 10 minutes in all;
``pytest -m slow`` runs them).

Each runs as a user would, ``python -m rayeffi bench NAME --quick``, in its own process
group with a deadline: a benchmark that hangs (the gloo teardown of its spawned ranks,
a Ray run that never starts) fails here instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from rayeffi.bench import BENCHMARK_NAMES

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.usefixtures("own_ray")]

DEADLINE_S = 420
EXTRA_ARGS = {
    "ddp": ["--cpu-share"],
    "dsd": ["--seeds", "1", "--regimes", "full-data"],
    "distill": ["--seeds", "1"],
    "prune-distill": ["--seeds", "1"],
    "pipeline": ["--stages", "2"],
    "precision": ["--device", "cpu"],
}
EXPECTED = {  # a line each benchmark prints only once it has measured its figure
    "ddp": "ratio rayeffi/native:",
    "dsd": "dsd - same_schedule",
    "precision": "bf16 speed-up",
    "distill": "cache / recompute =",
    "intra-layer": "bytes sent per rank per step",
    "pipeline": "gantt chart:",
    "ps": "async / sync updates/s",
    "prune-distill": "dsd_kd - dsd:",
    "scaling": "written:",
    "startup": "ratio local / 2 workers:",
    "compile": "graphs built per epoch",
    "memory": "held x",
    "soak": "growth driver:",
}


WORKLOAD_EXPECTED = {  # --workload on the built-in text: local mode, no Ray; the paired differences printed
    ("dsd", "lm"): ["dsd - same_schedule", "dsd - decayed", "sparsity 0.3:", "sparsity 0.5:"],
    ("dsd", "lstm"): ["dsd - same_schedule", "dsd - decayed", "sparsity 0.3:", "sparsity 0.5:"],
    ("distill", "lm"): ["kd - alone (ppl):", "distillation ahead (lower perplexity) on"],
}


def _run_bench(name: str, argv: list[str], tmp_path) -> str:
    """``rayeffi bench NAME --quick ...`` in its own process group: exit 0, no traceback; its stdout."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=DEADLINE_S + 60)  # the command's own deadline comes first
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"rayeffi bench {name} --quick outlived its own --timeout: {stdout[-500:]} {stderr[-500:]}")
    assert process.returncode == 0, (stdout[-2000:], stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-2000:]
    assert stdout.startswith(f"rayeffi bench {name} --quick: deadline"), stdout[:200]
    return stdout


@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_benchmark_finishes_in_its_quickest_mode(name, tmp_path):
    argv = [sys.executable, "-m", "rayeffi", "bench", name, "--quick", "--timeout", str(DEADLINE_S),
            *EXTRA_ARGS.get(name, [])]
    if name in ("pipeline", "scaling"):
        argv += ["--out", str(tmp_path / "out")]
    stdout = _run_bench(name, argv, tmp_path)
    assert EXPECTED[name] in stdout, stdout[-2000:]
    if name == "ddp":  # --cpu-share: the workers are among the processes that used the CPUs
        assert "cpu share, rayeffi train stage:" in stdout and "ray::RayTrainWorker" in stdout, stdout[-2000:]
    if name == "scaling":
        points = json.loads((tmp_path / "out/scaling.json").read_text())
        assert {point["axis"] for point in points} == {"rows", "width", "workers", "multinode"}
        assert all(point["epoch_s"] > 0 and point["samples_per_s"] > 0 for point in points)
        assert (tmp_path / "out/scaling.png").stat().st_size > 10_000


@pytest.mark.parametrize(("name", "workload"), list(WORKLOAD_EXPECTED))
def test_sequence_workload_prints_its_paired_differences(name, workload, tmp_path):
    argv = [sys.executable, "-m", "rayeffi", "bench", name, "--quick", "--timeout", str(DEADLINE_S),
            "--workload", workload, "--seeds", "2"]
    stdout = _run_bench(name, argv, tmp_path)
    for line in WORKLOAD_EXPECTED[name, workload]:
        assert line in stdout, stdout[-2000:]
    assert "per seed:" in stdout and stdout.count("per seed:") == (4 if name == "dsd" else 1), stdout[-2000:]
