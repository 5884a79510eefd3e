"""Every kind of bad input exits with status 2 and exactly one line ``error: ...`` (no Ray).

These all fail before Ray would start, so they are fast and start nothing.
"""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayeffi.cli import main

GOOD = "stages: [{name: train, kind: train, epochs: 1}]\n"


def _parquet(path, rows=64, width=4, labels=None, column="features"):
    features = pa.FixedSizeListArray.from_arrays(pa.array([0.5] * rows * width, pa.float32()), width)
    labels = labels if labels is not None else [i % 2 for i in range(rows)]
    pq.write_table(pa.table({column: features, "label": pa.array(labels, pa.int64())}), path)
    return path


def _parquet_recipe(path, extra=""):
    return f"data: {{dataset: parquet, path: {path}{extra}}}\n" + GOOD


CASES = {
    "yaml syntax": lambda tmp: ("stages: [\n", []),
    "empty recipe": lambda tmp: ("", []),
    "unknown key": lambda tmp: ("optimiser: {lr: 1}\n" + GOOD, []),
    "wrong type": lambda tmp: ("optimizer: {lr: fast}\n" + GOOD, []),
    "negative count": lambda tmp: ("scaling: {num_workers: -1}\n" + GOOD, []),
    "bad --set syntax": lambda tmp: (GOOD, ["--set", "optimizer.lr"]),
    "--set unknown stage": lambda tmp: (GOOD, ["--set", "stages.nope.epochs=2"]),
    "impossible batch split": lambda tmp: ("data: {batch_size: 7}\nscaling: {num_workers: 2}\n" + GOOD, []),
    "missing dataset": lambda tmp: (_parquet_recipe(tmp / "missing.parquet"), []),
    "not parquet": lambda tmp: (_parquet_recipe(_text_file(tmp / "bad.parquet")), []),
    "missing column": lambda tmp: (_parquet_recipe(_parquet(tmp / "c.parquet", column="x")), []),
    "negative labels": lambda tmp: (_parquet_recipe(_parquet(tmp / "n.parquet", labels=[-1] * 64)), []),
    "image shape mismatch": lambda tmp: (_parquet_recipe(_parquet(tmp / "i.parquet"), ", image_shape: [1, 3, 3]"), []),
    "cnn on flat rows": lambda tmp: (_parquet_recipe(_parquet(tmp / "f.parquet")), ["--set", "model.name=cnn"]),
    "user model not importable": lambda tmp: (GOOD, ["--set", "model.name=no_such_module:build"]),
    "init_from missing": lambda tmp: (GOOD, ["--set", f"stages.train.init_from={tmp}/nothing.pt"]),
    "tune value makes a bad stage": lambda tmp: (
        GOOD.replace("epochs: 1}", "epochs: 1, tune: {search_space: {optimizer.lr: {choice: [0.1, -1]}}}}"), []),
    "tune unknown key": lambda tmp: (
        GOOD.replace("epochs: 1}", "epochs: 1, tune: {search_space: {optimizer.rate: {choice: [0.1]}}}}"), []),
    "unknown precision policy": lambda tmp: (GOOD, ["--set", "precision=fp8"]),
    "precision not a name or mapping": lambda tmp: ("precision: [fp16]\n" + GOOD, []),
    "loss scale on bf16": lambda tmp: ("precision: {policy: bf16, loss_scale: 1024}\n" + GOOD, []),
    "bad loss scale": lambda tmp: (GOOD, ["--set", "precision={policy: fp16, loss_scale: auto}"]),
    "growth with static scale": lambda tmp: ("precision: {policy: fp16, loss_scale: 8, growth_interval: 5}\n" + GOOD, []),
    "unknown precision key": lambda tmp: ("precision: {policy: fp16, scale: 8}\n" + GOOD, []),
}


def _text_file(path):
    path.write_text("not parquet at all")
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line(case, tmp_path, capsys):
    text, extra = CASES[case](tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    code = main(["run", str(recipe), "--out", str(tmp_path / "out"), *extra])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_labels_out_of_range_names_the_fix(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(_parquet_recipe(_parquet(tmp_path / "l.parquet", labels=[0, 1, 2, 5] * 16), ", num_classes: 3"))
    assert main(["run", str(recipe)]) == 2
    assert "labels in 'label' range 0..5, outside [0, 3)" in capsys.readouterr().err


def test_unknown_command_and_report_without_summary(tmp_path, capsys):
    assert main(["fly"]) == 2
    assert main(["report", str(tmp_path)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)


def test_console_entry_point_exit_status(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optimizer: {lr: -1}\n" + GOOD)
    done = subprocess.run([sys.executable, "-m", "rayeffi", "run", str(recipe)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {recipe}: 'optimizer.lr': Input should be greater than 0 (got -1); "
        "fix it in the recipe or with --set optimizer.lr=..."
    ]


@pytest.mark.parametrize(("text", "expected"), [
    ("precision: fp8\n", "error: recipe.yaml: precision: unknown precision policy 'fp8': use one of fp32, bf16, fp16, fp16-master"),
    ("precision: {policy: bf16, loss_scale: 1024}\n",
     "error: recipe.yaml: precision: loss_scale is a loss-scaling option of policies fp16 and fp16-master, not 'bf16'"),
    ("precision: {policy: fp16, loss_scale: auto}\n",
     "error: recipe.yaml: precision.loss_scale: must be 'dynamic' or a positive number such as 1024, got 'auto'"),
])
def test_precision_errors_name_the_key_and_the_fix(text, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipe.yaml").write_text(text + GOOD)
    assert main(["run", "recipe.yaml"]) == 2
    assert capsys.readouterr().err.startswith(expected)


def test_every_benchmark_is_offered_on_the_command_line():
    from rayeffi import bench
    from rayeffi.cli import BENCHMARK_NAMES

    assert set(BENCHMARK_NAMES) == set(bench.BENCHMARK_NAMES)
    assert all(callable(bench.benchmark(name)) for name in BENCHMARK_NAMES)


def test_version_and_argparse_errors_name_the_command(capsys):
    from rayeffi import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"rayeffi {__version__}"
    assert main([]) == 2
    assert capsys.readouterr().err.strip().endswith("(see rayeffi --help)")
    assert main(["run"]) == 2
    assert capsys.readouterr().err.strip().endswith("(see rayeffi run --help)")


def test_a_gpu_count_keeps_a_cpu_per_worker():
    from rayeffi.recipe.sections import ScalingConfig

    assert ScalingConfig.model_validate({"resources_per_worker": {"GPU": 1}}).resources_per_worker == {
        "CPU": 1.0, "GPU": 1.0}
    assert ScalingConfig.model_validate({"resources_per_worker": {"CPU": 0, "GPU": 1}}).resources_per_worker == {
        "CPU": 0.0, "GPU": 1.0}


def test_builders_get_the_data_arguments_they_take():
    from torch import nn

    from rayeffi.data.info import DatasetInfo
    from rayeffi.errors import UserError
    from rayeffi.models import build_model
    from rayeffi.recipe.sections import ModelConfig

    info = DatasetInfo(num_features=4, num_classes=3, image_shape=None, num_train=8, num_val=2)

    def two_arguments(num_features, num_classes, hidden=5):  # no image_shape: called without it
        return nn.Sequential(nn.Linear(num_features, hidden), nn.Linear(hidden, num_classes))

    model = build_model(ModelConfig(name="x:y", builder=two_arguments, kwargs={"hidden": 7}), info)
    assert model[0].out_features == 7
    with pytest.raises(UserError, match=r"model.kwargs.hiden: the builder .*two_arguments takes no argument 'hiden' "
                                        r"\(it takes: num_features, num_classes, hidden\)"):
        build_model(ModelConfig(name="x:y", builder=two_arguments, kwargs={"hiden": 7}), info)
