"""``rayeffi validate``: run's checks and the plan, in seconds, without Ray or training."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray

from rayeffi.cli import main
from rayeffi.data.image_folder import write_mnist_folder

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_every_example_validates_in_seconds_without_ray(example, capsys, tmp_path, monkeypatch):
    if example.stem == "images_folder":  # its folder of PNGs, written first as the example says
        monkeypatch.chdir(tmp_path)
        write_mnist_folder(tmp_path / "runs" / "mnist_png", max_per_split=100)
    start = time.perf_counter()
    assert main(["validate", str(example)]) == 0
    assert time.perf_counter() - start < 30
    assert not ray.is_initialized()
    lines = capsys.readouterr().out.splitlines()
    # the precision check's lines come first: an fp16-on-CPU warning (mixed_precision), auto's pick
    out = [line for line in lines if not (line.startswith("warning: ") or " precision auto: " in line)]
    assert all(line.startswith("warning: ") or line.startswith("[") for line in lines[:len(lines) - len(out)])
    assert out[0].startswith("recipe ") and len(out) >= 2
    assert all(line.startswith("  ") and "hands on its checkpoint" in line for line in out[1:])


def test_a_broken_recipe_gives_runs_error_line(write_recipe, capsys):
    recipe = write_recipe("model: {name: cnn}\nprecision: bf16\nscaling: {num_workers: 2}\n"
                          "parallel: {strategy: intra_layer}\nstages: [{name: s, kind: train}]\n")
    assert main(["validate", str(recipe)]) == 2
    validate_err = capsys.readouterr().err.strip().splitlines()
    assert main(["run", str(recipe), "--out", str(recipe.parent / "out")]) == 2
    run_err = capsys.readouterr().err.strip().splitlines()
    assert len(validate_err) == 1 and validate_err == run_err and "runs fp32 only" in validate_err[0]
    missing = write_recipe("stages: [{name: s, kind: train, init_from: /nowhere/checkpoint.pt}]\n", "missing.yaml")
    assert main(["validate", str(missing)]) == 2
    assert "init_from" in capsys.readouterr().err
