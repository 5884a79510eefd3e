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
    monkeypatch.setattr("rayeffi.driver.run.start_ray", refuse)


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
    ({"recipe": ["train"], "stages": []}, "'recipe' is a list, not a mapping"),
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


def _fake_run(behaviour):
    def run_recipe(recipe, out_dir, **kwargs):
        return behaviour(out_dir)
    return run_recipe


def test_interrupt_exits_130_with_the_resume_command(tmp_path, capsys, monkeypatch):
    def interrupted(out_dir):
        raise KeyboardInterrupt
    monkeypatch.setattr("rayeffi.driver.run.run_recipe", _fake_run(interrupted))
    (tmp_path / "r.yaml").write_text(GOOD)
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "r.yaml"), "--set", "optimizer.lr=0.05", "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"interrupted: resume with rayeffi run {tmp_path / 'r.yaml'} --set optimizer.lr=0.05 "
                   f"--out {out} --resume"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stages"] == [] and summary["storage"] == str(out / "ray")
    assert summary["recipe"]["optimizer"]["lr"] == 0.05  # what --resume compares the recipe against


def test_run_directory_deleted_mid_run(tmp_path, capsys, monkeypatch):
    def deleted(out_dir):
        import shutil
        shutil.rmtree(out_dir)
        raise FileNotFoundError(2, "No such file or directory", str(out_dir / "progress.jsonl"))
    monkeypatch.setattr("rayeffi.driver.run.run_recipe", _fake_run(deleted))
    (tmp_path / "r.yaml").write_text(GOOD)
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert "the run directory was deleted while the run was going" in _one_error_line(capsys)


def test_a_refused_run_leaves_no_empty_directory(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("data: {batch_size: 4096}\n" + GOOD)
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert "fewer than data.batch_size 4096" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_refused_run_leaves_no_empty_parents(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("data: {batch_size: 4096}\n" + GOOD)
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "a/b/out")]) == 2
    assert not (tmp_path / "a").exists()
