"""Every recipe in examples/ runs at smoke size; each example's own promises are checked.

Runs are cached per module (a Ray Train run costs 10-30 s of start-up), so the checks below
reuse the smoke runs of their examples whichever test runs first. A data-parallel stage
runs in local mode here (``stages.NAME.scaling.num_workers=0``: the same worker loop, in
the driver, or in each Tune trial's process for a tuned stage): what it proves is the
recipe, the model, the techniques and the search; the Ray Train path of data parallelism
is proven by tests/ray/test_train_stage.py (parity with one process, in memory and
streaming), Ray Tune over Ray Train runs by tests/ray/test_tune.py. Every other stage runs
on Ray as shipped: strategies with several ranks (pipeline, intra-layer, parameter
server), and the ``dsd`` example's DSD stage (its masks under DDP on 2 Ray Train workers).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from rayeffi.cli import main
from rayeffi.data import builtin_digits_paths
from rayeffi.data.image_folder import write_mnist_folder
from rayeffi.models import ConvNet
from rayeffi.recipe import load_recipe
from rayeffi.driver.run import run_recipe
from rayeffi.task import headline_metrics

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]

EXAMPLES = {path.stem: path for path in sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))}
QUICKSTART_FLOOR = 0.95
ASYNC_FLOOR = 0.9  # asynchronous SGD with stale gradients: a lower floor
ON_RAY = {("dsd", "dsd")}  # (example, stage): data-parallel stages that run on Ray Train here all the same


def local_overrides(name: str, given: list[str] = ()) -> list[str]:
    """The overrides that run an example's plain data-parallel stages in local mode (after ``given``:
    the recipe's files must exist when it is read)."""
    recipe = load_recipe(EXAMPLES[name], list(given), smoke=True)
    return [f"stages.{stage.name}.scaling.num_workers=0" for stage in recipe.stages
            if stage.parallel.strategy == "data_parallel" and (name, stage.name) not in ON_RAY]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    runs: dict[str, tuple[Path, dict]] = {}

    def run(name: str) -> tuple[Path, dict]:
        if name not in runs:
            out = tmp_path_factory.mktemp(name)
            overrides = []
            if name == "images_folder":  # its folder of PNGs, written as the example says
                root = write_mnist_folder(out / "mnist_png", max_per_split=600)
                overrides += [f"data.path={root / 'train'}", f"data.val_path={root / 'val'}"]
            overrides += local_overrides(name, overrides)
            if name == "mnist_cnn":  # its tiles on a 1x2 grid: 2 workers start where 4 would (a 2x2 tile
                # grid's numerics: tests/unit/test_intra_layer_gloo.py; a 4-worker mesh on Ray:
                # tests/ray/test_intra_layer_stage.py)
                overrides += ["stages.tiles.parallel.grid=[1, 2]", "stages.tiles.scaling.num_workers=2"]
            runs[name] = out, run_recipe(load_recipe(EXAMPLES[name], overrides, smoke=True), out)
        return runs[name]

    return run


def test_there_are_examples():
    assert {"quickstart", "cnn_finetune", "dsd", "dsd_tune", "language_model", "mnist_cnn"} <= set(EXAMPLES)


def test_the_language_model_example_reports_perplexity_and_measured_sparsity(smoke_run):
    _, summary = smoke_run("language_model")
    for stage in summary["stages"]:
        assert "val_perplexity" in stage["metrics"] and "val_accuracy" not in stage["metrics"]
    prune = next(stage for stage in summary["stages"] if stage["name"] == "prune")
    sparse = [phase for phase in prune["rounds"] if phase["phase"] == "sparse"]
    assert sparse and abs(sparse[0]["measured_sparsity"] - 0.5) < 0.01


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_runs_at_smoke_size(name, smoke_run):
    if name.startswith("hf_"):
        pytest.importorskip("transformers", reason="the Hugging Face examples need transformers (the test extra)")
    _, summary = smoke_run(name)
    recipe = load_recipe(summary["recipe"])  # as it ran: smoke-sized, its paths resolved
    assert summary["status"] == "complete"
    assert [s["name"] for s in summary["stages"]] == [s.name for s in recipe.stages]
    for stage in summary["stages"]:
        assert Path(stage["checkpoint"]).is_file()
        figures = headline_metrics(stage["metrics"])  # the task's: accuracy, perplexity, ...
        assert figures and all(math.isfinite(value) for value in figures.values())
        if "val_accuracy" in figures:
            assert 0.0 <= figures["val_accuracy"] <= 1.0
        if "trials" not in stage:  # a tuned stage's epochs depend on its best trial's schedule
            assert len(stage["history"]) == recipe.stage(stage["name"]).total_epochs


@pytest.mark.slow  # a full-size run: the smoke run above is the default check
def test_quickstart_reaches_its_accuracy_floor(tmp_path):
    summary = run_recipe(load_recipe(EXAMPLES["quickstart"]), tmp_path)
    assert summary["stages"][0]["metrics"]["val_accuracy"] >= QUICKSTART_FLOOR


def test_dsd_example_prunes_exports_and_draws(smoke_run, capsys):
    out, summary = smoke_run("dsd")
    dsd = summary["stages"][1]
    assert dsd["num_workers"] == 2
    sparse = [r for r in dsd["rounds"] if r["phase"] == "sparse"]
    assert [r["target_sparsity"] for r in sparse] == [0.5, 0.25]
    layer_sizes = {"layers.1.weight": 64 * 128, "layers.3.weight": 128 * 64, "layers.5.weight": 64 * 10}
    for phase in sparse:
        for name, measured in phase["layer_sparsity"].items():
            assert abs(measured - phase["target_sparsity"]) * layer_sizes[name] <= 1
    redense = [r for r in dsd["rounds"] if r["phase"] == "redense"]
    assert all(r["measured_sparsity"] < 0.2 for r in redense)  # pruned weights came back
    state = torch.load(dsd["checkpoint"], weights_only=True)
    assert set(state["techniques"]["dsd"]["sparse"]["masks"]) == set(layer_sizes)

    for fmt in ("bitmask", "csr"):
        assert main(["export", str(out), "--stage", "dsd", "--format", fmt]) == 0
    printed = capsys.readouterr().out
    assert printed.count("loads back to identical weights: verified") == 2
    bitmask = (out / "stages/dsd/sparse-bitmask.pt").stat().st_size
    csr = (out / "stages/dsd/sparse-csr.pt").stat().st_size
    assert bitmask < 0.85 * 4 * sum(layer_sizes.values()) < csr  # 25% sparse: bitmask pays, CSR does not

    assert main(["report", str(out)]) == 0
    assert {"dsd-phases.png", "dsd-pruning.png"} <= {p.name for p in (out / "report").iterdir()}


def test_prune_distill_example_prunes_while_the_teacher_teaches(smoke_run):
    out, summary = smoke_run("prune_distill")
    stage = summary["stages"][2]
    assert stage["name"] == "sparse_kd" and stage["techniques"] == ["dsd", "distill"]
    assert stage["teachers"] == [summary["stages"][0]["checkpoint"]] and "cache" in stage
    sparse = next(r for r in stage["rounds"] if r["phase"] == "sparse")
    assert sparse["target_sparsity"] == 0.5 and "kd_soft_loss" in sparse
    assert all(abs(value - 0.5) < 0.01 for value in sparse["layer_sparsity"].values())  # measured per layer
    assert all("kd_soft_loss" in row and "dsd_phase" in row for row in stage["history"])
    # the sparse phase's weights, counted in the checkpoint: half of every pruned layer is zero
    state = torch.load(stage["checkpoint"], weights_only=True)["techniques"]["dsd"]["sparse"]
    for name, mask in state["masks"].items():
        zeros = int((state["model"][name] == 0).sum())
        assert zeros >= int((~mask).sum()) and abs(zeros / mask.numel() - 0.5) < 0.01
    assert main(["export", str(out), "--stage", "sparse_kd", "--format", "bitmask"]) == 0


def test_dsd_tune_example_searches_schedules(smoke_run):
    _, summary = smoke_run("dsd_tune")
    dsd = summary["stages"][1]
    assert len(dsd["trials"]) == 2
    for trial in dsd["trials"]:
        assert trial["status"] == "done"
        assert trial["config"]["dsd.rounds"] in ([0.5], [0.5, 0.25], [0.7, 0.5], [0.3, 0.3, 0.3])
        assert 0.0 <= trial["metrics"]["val_accuracy"] <= 1.0
    assert dsd["best_trial"] in {t["trial_id"] for t in dsd["trials"]}
    assert [r["target_sparsity"] for r in dsd["rounds"] if r["phase"] == "sparse"] == dsd["best_config"]["dsd.rounds"]


def test_distill_example_tunes_students_and_hands_the_best_on(smoke_run):
    import pyarrow.parquet as pq

    from rayeffi.data.info import DatasetInfo
    from rayeffi.data.sources import builtin_digits_paths
    from rayeffi.models import build_model
    from rayeffi.recipe.sections import ModelConfig

    _, summary = smoke_run("distill")
    teacher, student = summary["stages"]
    assert student["kind"] == "distill" and student["teachers"] == [teacher["checkpoint"]]
    trials = student["trials"]
    assert len(trials) == 2 and all(t["status"] == "done" for t in trials)
    for trial in trials:
        assert trial["config"]["distill.temperature"] in (2.0, 4.0, 8.0)
        assert 0.5 <= trial["config"]["distill.alpha"] <= 0.95
    best = next(t for t in trials if t["trial_id"] == student["best_trial"])
    assert best["metrics"]["val_accuracy"] == max(t["metrics"]["val_accuracy"] for t in trials)
    assert student["metrics"]["val_accuracy"] == best["metrics"]["val_accuracy"]

    # the artifact is the best trial's student: its weights score what the trial reported
    state = torch.load(student["checkpoint"], weights_only=True)
    info = DatasetInfo(num_features=64, num_classes=10, image_shape=(1, 8, 8), num_train=1, num_val=1)
    model = build_model(ModelConfig(name="mlp", hidden_sizes=(64,)), info)
    model.load_state_dict(state["model"])
    val = pq.read_table(builtin_digits_paths()[1])
    features = torch.tensor(val["features"].to_pylist(), dtype=torch.float32)
    correct = (model(features).argmax(1) == torch.tensor(val["label"].to_pylist())).sum().item()
    assert correct / len(features) == pytest.approx(best["metrics"]["val_accuracy"], abs=1e-9)

    cache = pq.read_table(student["cache"]["path"] + "/train")
    assert cache.column_names[-1] == "teacher_logits" and len(cache["teacher_logits"][0]) == 10


def test_intra_layer_example_splits_and_checkpoints_the_whole_cnn(smoke_run):
    _, summary = smoke_run("intra_layer")
    stage = summary["stages"][0]
    assert stage["num_workers"] == 2  # --smoke: the 2x2 grid becomes 1x2
    assert summary["recipe"]["stages"][0]["parallel"]["strategy"] == "intra_layer"
    state = torch.load(stage["checkpoint"], weights_only=True)
    plain = {"features.0.weight": (16, 1, 3, 3), "features.2.weight": (32, 16, 3, 3),
             "classifier.1.weight": (64, 32 * 4 * 4), "classifier.3.weight": (10, 64)}
    for name, shape in plain.items():
        assert tuple(state["model"][name].shape) == shape  # whole tensors, not one worker's shard


def test_pipeline_example_assembles_into_the_plain_cnn(smoke_run):
    _, summary = smoke_run("pipeline")
    stage = summary["stages"][0]
    assert stage["num_workers"] == 2
    state = torch.load(stage["checkpoint"], weights_only=True)
    assert len(state["pipeline_stages"]) == 2  # each stage's own optimizer state
    model = ConvNet((1, 8, 8), 10, (16, 32))
    model.load_state_dict(state["model"])  # strict: the stages assemble into the whole CNN
    val = pq.read_table(builtin_digits_paths()[1])
    inputs = torch.tensor(np.stack(val["features"].to_numpy(zero_copy_only=False)), dtype=torch.float32)
    with torch.no_grad():
        accuracy = (model(inputs).argmax(1) == torch.tensor(val["label"].to_numpy())).float().mean().item()
    assert accuracy == pytest.approx(stage["metrics"]["val_accuracy"], abs=1e-6)


@pytest.mark.slow  # a full-size run: the smoke run above is the default check
def test_pipeline_example_reaches_the_quickstart_floor(tmp_path):
    summary = run_recipe(load_recipe(EXAMPLES["pipeline"]), tmp_path)
    assert summary["stages"][0]["metrics"]["val_accuracy"] >= QUICKSTART_FLOOR


@pytest.mark.slow  # a full-size run on 4 workers: the smoke run above is the default check
def test_intra_layer_example_reaches_the_quickstart_floor(tmp_path):
    summary = run_recipe(load_recipe(EXAMPLES["intra_layer"]), tmp_path)  # 4 workers, 2x2 tiles
    assert summary["stages"][0]["num_workers"] == 4
    assert summary["stages"][0]["metrics"]["val_accuracy"] >= QUICKSTART_FLOOR


def test_param_server_example_keeps_its_staleness_bound(smoke_run):
    _, summary = smoke_run("param_server")
    stage = summary["stages"][0]
    assert stage["param_server"]["mode"] == "async" and stage["param_server"]["num_servers"] == 2
    histogram = {int(k): v for k, v in stage["param_server"]["staleness_histogram"].items()}
    assert max(histogram) <= 2 and sum(v for k, v in histogram.items() if k > 0) > 0  # bounded, and asynchronous
    steps = 2 * 2 * (512 // 2 // 32)  # smoke: epochs x workers x batches per worker (shards of 256 rows)
    assert sum(histogram.values()) == 2 * steps  # every push, on each of the 2 shards
    for row in stage["history"]:
        assert max(int(k) for k in row["staleness_histogram"]) <= row["staleness_max"] <= 2
    state = torch.load(stage["checkpoint"], weights_only=True)
    assert set(state) >= {"model", "optimizer", "scheduler", "epoch", "rng", "metrics", "param_server"}
    assert state["epoch"] == 2 and len(state["optimizer"]["shards"]) == 2


@pytest.mark.slow  # a full-size run: the smoke run above is the default check
def test_param_server_example_reaches_its_floor(tmp_path):
    summary = run_recipe(load_recipe(EXAMPLES["param_server"]), tmp_path)
    assert summary["stages"][0]["metrics"]["val_accuracy"] >= ASYNC_FLOOR


def test_hf_bert_example_trains_prunes_and_exports(smoke_run):
    pytest.importorskip("transformers", reason="the Hugging Face examples need transformers (the test extra)")
    out, summary = smoke_run("hf_bert")
    dsd = summary["stages"][1]
    sparse = next(r for r in dsd["rounds"] if r["phase"] == "sparse")
    assert all(reason.startswith("embedding") for reason in sparse["dense_layers"].values())
    state = torch.load(dsd["checkpoint"], weights_only=True)["techniques"]["dsd"]["sparse"]
    zeros = sum(int((state["model"][name] == 0).sum()) for name in state["masks"])
    assert zeros / sum(mask.numel() for mask in state["masks"].values()) == pytest.approx(
        sparse["measured_sparsity"], abs=1e-3)
    assert main(["export", str(out), "--stage", "dsd", "--format", "bitmask"]) == 0
