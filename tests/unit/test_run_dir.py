"""The run directory holds one run; summary.json says where and with what it ran."""

from __future__ import annotations

import pytest
import torch

from rayeffi.checkpoint import checkpoint_state, save_atomic
from rayeffi.cli import main
from rayeffi.driver.run_dir import claim_run_dir, environment, git_commit, parameter_counts
from rayeffi.errors import UserError


def test_an_earlier_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    claim_run_dir(tmp_path, resume=False, overwrite=False)  # empty: a new run may start
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "stages" / "train").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match=r"already holds a run .*--resume.*--overwrite"):
        claim_run_dir(tmp_path, resume=False, overwrite=False)
    claim_run_dir(tmp_path, resume=True, overwrite=False)  # continuing it is what --resume is for
    assert (tmp_path / "summary.json").exists()
    with pytest.raises(UserError, match="--resume and --overwrite together"):
        claim_run_dir(tmp_path, resume=True, overwrite=True)
    claim_run_dir(tmp_path, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # the run's outputs gone, the datasets kept


def test_the_cli_refuses_a_second_run_into_the_same_out(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.json").write_text("{}")
    assert main(["run", "examples/quickstart.yaml", "--smoke", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out ") and "--overwrite" in err and "\n" not in err
    assert main(["run", "examples/quickstart.yaml", "--out", str(tmp_path / "out"), "--resume", "--overwrite"]) == 2


def test_environment_and_parameter_counts(tmp_path):
    env = environment()
    assert {"python", "rayeffi", "torch", "pyarrow"} <= set(env["versions"])
    assert env["host"] and env["started"]
    assert git_commit(tmp_path) is None  # not a repository
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    with torch.no_grad():
        model[0].weight[0].zero_()
    state = checkpoint_state(epoch=1, training={"model": model.state_dict()}, scheduler={}, rng=[], metrics={})
    path = save_atomic(state, tmp_path / "c.pt")
    counts = parameter_counts(str(path))
    # Linear 12 + 3, BatchNorm weight 3 + bias 3 (zeros at init); the running statistics left out
    assert counts == {"parameters": 21, "nonzero_parameters": 21 - 4 - 3}
    assert parameter_counts(str(tmp_path / "missing.pt")) == {}


def test_a_run_that_raised_is_recorded_with_its_status():
    from rayeffi.driver.run import ended_by
    from rayeffi.health import HealthStop, TrainingDiverged

    assert ended_by(TrainingDiverged("stages.a: the training loss became non-finite\nmore")) == (
        "diverged", "stages.a: the training loss became non-finite")
    assert ended_by(UserError("data.path x does not exist")) == ("error", "data.path x does not exist")
    assert ended_by(RuntimeError("worker died")) == ("failed", "worker died")
    assert ended_by(KeyboardInterrupt()) == ("interrupted", None)
    HealthStop.report("stages.a: the fp16 loss scale collapsed")
    try:
        assert ended_by(KeyboardInterrupt()) == ("diverged", "stages.a: the fp16 loss scale collapsed")
    finally:
        assert HealthStop.take()  # left for the command line, which takes it
