"""``--out`` places that cannot hold a run, and ``rayeffi report`` on a summary of the wrong shape."""

from __future__ import annotations

import json

import pytest

from rayeffi.cli import main

GOOD = "stages: [{name: train, kind: train, epochs: 1}]\n"


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a bad --out reached Ray")
    monkeypatch.setattr("rayeffi.run.start_ray", refuse)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(("make", "expected"), [
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file", "is an existing file"),
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file" / "below" / "run", "which is a file"),
    (lambda tmp: __import__("pathlib").Path("/proc/rayeffi-run"), "cannot write in /proc"),
])
def test_bad_out_exits_2(make, expected, tmp_path, capsys, no_ray):
    (tmp_path / "r.yaml").write_text(GOOD)
    out = make(tmp_path)
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(out)]) == 2
    assert expected in _one_error_line(capsys)


@pytest.mark.parametrize(("summary", "expected"), [
    ([1, 2], "holds a list, not a mapping"),
    ({"stages": {"train": {}}}, "'stages' is a dict, not a list"),
    ({"stages": [{"name": "train"}]}, "stages[0] is not a mapping with a 'name' and a 'kind'"),
    ({"stages": [{"name": "t", "kind": "train", "history": [{"epoch": 1}]}]}, "lacks train_loss, val_loss"),
    ({"stages": [{"name": "t", "kind": "train", "history": [
        {"epoch": 1, "train_loss": "low", "val_loss": 1, "val_accuracy": 0.5}]}]}, "non-numbers in train_loss"),
    ({"stages": [{"name": "t", "kind": "dsd", "history": [
        {"epoch": 1, "train_loss": 1, "val_loss": 1, "val_accuracy": 0.5}]}]}, "lacks dsd_phase, sparsity"),
    ({"stages": [{"name": "t", "kind": "dsd", "history": [
        {"epoch": 1, "train_loss": 1, "val_loss": 1, "val_accuracy": 0.5, "dsd_phase": "dense", "sparsity": 0,
         "pruning_histogram": {"before": 3}}]}]}, "cannot be plotted"),
])
def test_report_on_a_summary_of_the_wrong_shape(summary, expected, tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(tmp_path)]) == 2
    assert expected in _one_error_line(capsys)
