"""The train stage through real Ray Train runs: DDP parity, local mode, resume, init_from, and the
Python API (``rayeffi.run`` with a dict and a model builder, ``load_model``)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

import rayeffi
from rayeffi.data import builtin_digits_paths
from rayeffi.data.info import DatasetInfo
from rayeffi.models import build_model
from rayeffi.recipe import validate_recipe
from rayeffi.driver.run import run_recipe
from rayeffi.stages import StageContext
from rayeffi.stages import run_stage
from rayeffi.data.sources import resolve_source
from rayeffi.checkpoint import load_checkpoint
from helpers.reference import full_batch_sgd

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]

NUM_ROWS, EPOCHS, LR, MOMENTUM = 256, 4, 0.1, 0.9


def _full_batch_recipe(root, num_workers, data=None, **stage):
    # full-batch steps: every step sees all 256 rows whatever the sharding, so DDP over
    # 2 workers (128 rows each, gradients averaged) must equal one process on 256 rows
    return validate_recipe({
        "seed": 0,
        "data": {"dataset": "parquet", "path": str(root / "train.parquet"), "val_path": str(root / "val.parquet"),
                 "batch_size": NUM_ROWS, "shuffle": False, "num_classes": 10, **(data or {})},
        "model": {"name": "mlp", "hidden_sizes": [32]},
        "optimizer": {"name": "sgd", "lr": LR, "momentum": MOMENTUM},
        "scaling": {"num_workers": num_workers, "resources_per_worker": {"CPU": 1}},
        "stages": [{"name": "train", "kind": "train", "epochs": EPOCHS, **stage}],
    })


def _single_process_reference(root):
    model = _full_batch_recipe(root, 0).stages[0].model
    return full_batch_sgd(root / "train.parquet", lambda: build_model(model, DatasetInfo(64, 10, None, NUM_ROWS, 64)),
                          EPOCHS, LR, MOMENTUM)


@pytest.mark.parametrize("num_workers, data", [(2, None), (0, None), (2, {"in_memory_mb": 0})],
                         ids=["2-in-memory", "local", "2-streaming"])
def test_matches_single_process_training(small_digits, tmp_path, num_workers, data):
    # in memory: the driver hands each worker its shard; streaming (a shard over the
    # budget): Ray Train's streaming split, read through Ray Data every epoch
    summary = run_recipe(_full_batch_recipe(small_digits, num_workers, data), tmp_path)
    stage = summary["stages"][0]
    params = load_checkpoint(stage["checkpoint"])["model"]
    reference, losses = _single_process_reference(small_digits)
    for name, value in reference.items():
        torch.testing.assert_close(params[name], value, rtol=0, atol=1e-5)
    assert [row["train_loss"] for row in stage["history"]] == pytest.approx(losses, abs=1e-5)
    assert [row["epoch"] for row in stage["history"]] == [1, 2, 3, 4]
    assert stage["num_workers"] == num_workers
    assert {"train_loss", "val_loss", "val_accuracy", "samples_per_s", "epoch"} <= set(stage["metrics"])


def test_checkpoint_holds_the_whole_training_state(small_digits, tmp_path):
    summary = run_recipe(_full_batch_recipe(small_digits, 0), tmp_path)
    state = torch.load(summary["stages"][0]["checkpoint"], weights_only=True)
    assert state["epoch"] == EPOCHS
    assert set(state) >= {"model", "optimizer", "scheduler", "epoch", "rng", "metrics", "history"}
    assert state["history"] == summary["stages"][0]["history"]  # every epoch's record travels with the weights
    assert state["optimizer"]["state"], "momentum buffers are saved"
    assert isinstance(state["rng"][0]["torch"], torch.Tensor)
    # the run explains itself: versions, times, and the stage's parameters counted in its checkpoint
    environment = summary["environment"]
    assert environment["versions"]["torch"] and environment["versions"]["ray"]
    assert environment["started"] <= environment["ended"]
    stage = summary["stages"][0]
    parameters = sum(v.numel() for k, v in state["model"].items() if v.is_floating_point())
    assert stage["parameters"] == parameters and 0 < stage["nonzero_parameters"] <= parameters


def test_resume_continues_where_it_stopped(tmp_path):
    """2 epochs, then resume to 4, equals 4 epochs straight (dropout makes the RNG matter)."""
    def recipe(epochs):
        return validate_recipe({
            "data": {"max_samples": 256, "batch_size": 32},
            "model": {"hidden_sizes": [32], "dropout": 0.2},
            "optimizer": {"lr": 0.05, "momentum": 0.9},
            "scaling": {"num_workers": 0},
            "stages": [{"name": "train", "kind": "train", "epochs": epochs}],
        })

    straight = run_recipe(recipe(4), tmp_path / "straight")["stages"][0]
    first_half = run_recipe(recipe(2), tmp_path / "half")["stages"][0]
    stage = recipe(4).stages[0]
    context = StageContext(
        stage_dir=tmp_path / "resumed", storage_path=tmp_path / "resumed-ray",
        source=resolve_source(stage.data, stage.seed, tmp_path), previous=None,
        resume_checkpoint=first_half["checkpoint"],
    )
    resumed = run_stage(stage, context)
    assert resumed.artifact.metrics["epoch"] == 4
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed.artifact.checkpoint)
    for name in a["model"]:
        torch.testing.assert_close(b["model"][name], a["model"][name], rtol=0, atol=1e-6)
    assert b["metrics"]["train_loss"] == pytest.approx(a["metrics"]["train_loss"], abs=1e-6)


def test_resume_within_an_epoch_equals_an_uninterrupted_run(tmp_path):
    """checkpoint_every_steps 3 over 8 steps an epoch: ``--resume`` of a copy of a finished run
    whose driver "died" before the summary's stage entry takes the newest checkpoint that
    leaves steps to run (epoch 1, step 7: global step 15), continues epoch 2 from its step 8
    and ends with the same weights (dropout: the RNG; momentum; a per-step schedule)."""
    recipe = validate_recipe({
        "data": {"max_samples": 256, "batch_size": 32},
        "model": {"hidden_sizes": [32], "dropout": 0.2},
        "optimizer": {"lr": 0.05, "momentum": 0.9, "schedule": {"name": "cosine", "warmup_steps": 2}},
        "scaling": {"num_workers": 1},  # Ray Train's storage holds the checkpoints --resume reads
        "stages": [{"name": "train", "kind": "train", "epochs": 2, "checkpoint_every_steps": 3,
                    "eval_every_steps": 4}],
    })
    straight = run_recipe(recipe, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    summary = json.loads((tmp_path / "b/summary.json").read_text())
    summary.update(status="running", stages=[], storage=str(tmp_path / "b/ray"))  # died within epoch 2
    (tmp_path / "b/summary.json").write_text(json.dumps(summary))
    resumed = run_recipe(recipe, tmp_path / "b", resume=True)

    assert resumed["resumes"][-1] == {"skipped": [], "stage": "train", "from_epoch": 1, "from_step": 7}
    a, b = (load_checkpoint(run["stages"][0]["checkpoint"]) for run in (straight, resumed))
    for name in a["model"]:
        torch.testing.assert_close(b["model"][name], a["model"][name], rtol=0, atol=1e-6)
    for run in (straight, resumed):
        stage = run["stages"][0]
        assert [row["epoch"] for row in stage["history"]] == [1, 2]  # epochs once each, no eval rows
        assert [(row["step"], row["epoch"]) for row in stage["evals"]] == [(4, 0.5), (12, 1.5)]
        assert all(0 <= row["val_accuracy"] <= 1 and row["val_loss"] > 0 for row in stage["evals"])


def test_init_from_previous_passes_only_the_weights(tmp_path):
    summary = run_recipe(validate_recipe({
        "data": {"max_samples": 128},
        "scaling": {"num_workers": 0},
        "stages": [
            {"name": "first", "kind": "train", "epochs": 2},
            {"name": "second", "kind": "train", "epochs": 1, "init_from": "previous",
             "optimizer": {"lr": 1e-12}},
        ],
    }), tmp_path)
    first, second = (load_checkpoint(stage["checkpoint"]) for stage in summary["stages"])
    for name in first["model"]:
        torch.testing.assert_close(second["model"][name], first["model"][name], rtol=0, atol=1e-8)
    assert second["epoch"] == 1  # a new stage: its own epoch count, fresh optimizer
    assert summary["status"] == "complete" and [s["name"] for s in summary["stages"]] == ["first", "second"]


def test_a_diverged_run_through_the_python_api_raises_one_line_and_is_recorded(tmp_path):
    """``rayeffi.run`` raises the one-line ``UserError`` the command line prints, and summary.json's
    status is ``diverged`` with that line as its ``error`` (not ``running`` for ever)."""
    with pytest.raises(rayeffi.TrainingDiverged) as raised:  # a UserError
        rayeffi.run({"data": {"dataset": "digits", "batch_size": 64, "max_samples": 256},
                     "optimizer": {"name": "sgd", "lr": 1.0e30, "momentum": 0.9},
                     "scaling": {"num_workers": 0}, "stages": [{"name": "train", "kind": "train", "epochs": 1}]},
                    out=tmp_path)
    message = str(raised.value)
    assert message.startswith("stages.train: the training loss became non-finite at epoch 1") and "\n" not in message
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["error"] == message


def _digits(split: int) -> tuple[torch.Tensor, torch.Tensor]:
    table = pq.read_table(builtin_digits_paths()[split])
    features = torch.tensor(np.stack(table["features"].to_numpy(zero_copy_only=False)), dtype=torch.float32)
    return features, torch.tensor(table["label"].to_numpy())


def test_a_plain_state_dict_of_a_pretrained_model_starts_a_stage(tmp_path):
    """A model trained outside rayeffi, saved with torch.save(model.state_dict()): one epoch from
    it at lr 1e-9 validates exactly as the pretrained model does (local mode)."""
    model_config = {"name": "mlp", "hidden_sizes": [32]}
    torch.manual_seed(5)
    model = build_model(validate_recipe({"model": model_config, "stages": [{"name": "s", "kind": "train"}]})
                        .stages[0].model, DatasetInfo(64, 10, (1, 8, 8), 1437, 360))
    (features, labels), (val_features, val_labels) = _digits(0), _digits(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):  # full-batch steps: a second on the CPU
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(features), labels).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        pretrained_accuracy = (model(val_features).argmax(dim=1) == val_labels).float().mean().item()
    assert pretrained_accuracy > 0.9  # far from a fresh model's ~0.1: a stage that ignored the file would show it
    torch.save(model.state_dict(), tmp_path / "pretrained.pt")

    summary = run_recipe(validate_recipe({
        "model": model_config,
        "optimizer": {"name": "sgd", "lr": 1e-9},
        "scaling": {"num_workers": 0},
        "stages": [{"name": "finetune", "kind": "train", "epochs": 1, "init_from": str(tmp_path / "pretrained.pt")}],
    }), tmp_path / "run")
    assert summary["stages"][0]["metrics"]["val_accuracy"] == pytest.approx(pretrained_accuracy, abs=1e-6)


def small_net(num_features, num_classes, image_shape=None, hidden=16):
    """A model builder defined in this test module, which Ray's workers cannot import."""
    return torch.nn.Sequential(torch.nn.Linear(num_features, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, num_classes))


def test_python_api_runs_a_dict_with_a_model_builder_and_loads_the_trained_model(tmp_path):
    result = rayeffi.run({
        "seed": 0,
        "data": {"dataset": "digits", "batch_size": 64},
        "model": {"kwargs": {"hidden": 24}},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 1}},
        "stages": [{"name": "train", "kind": "train", "epochs": 1}],
    }, out=tmp_path / "run", model=small_net)
    assert result.status == "complete" and list(result.stages) == ["train"]
    assert result.summary["recipe"]["model"]["name"].endswith(":small_net")
    assert result.checkpoint() == result.checkpoint("train") and result.checkpoint().is_file()

    model = result.load_model("train")
    assert not model.training and model[0].out_features == 24
    validation = pq.read_table(builtin_digits_paths()[1])
    features = torch.tensor(np.stack(validation["features"].to_numpy(zero_copy_only=False)), dtype=torch.float32)
    labels = torch.tensor(validation["label"].to_numpy())
    with torch.no_grad():
        accuracy = (model(features).argmax(dim=1) == labels).float().mean().item()
    assert accuracy == pytest.approx(result.metrics["val_accuracy"], abs=1e-6)
    again = rayeffi.load_model(tmp_path / "run", model=small_net)  # from the directory alone
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value)


def test_step_options_in_one_recipe(tmp_path):
    """An optimizer by import path, a per-step warm-up + cosine, clipping, early stopping and
    a user loss and metric through run_recipe (local mode): early stopping ends the stage
    after epoch 2 of 3."""
    summary = run_recipe(validate_recipe({
        "task": {"loss": "helpers.user_scores:smoothed_cross_entropy", "metrics": ["helpers.user_scores:top2_accuracy"]},
        "data": {"max_samples": 256, "batch_size": 32},
        "model": {"hidden_sizes": [32]},
        "optimizer": {"name": "torch.optim.RMSprop", "lr": 0.002, "kwargs": {"alpha": 0.9}, "max_grad_norm": 0.5,
                      "schedule": {"name": "cosine", "warmup_steps": 4}},
        "scaling": {"num_workers": 0},
        "stages": [{"name": "train", "kind": "train", "epochs": 3,
                    # no val_loss improves by 100: the second epoch is the one without improvement
                    "early_stop": {"patience": 1, "metric": "val_loss", "min_delta": 100.0}}],
    }), tmp_path)["stages"][0]
    assert summary["stopped_early"] == {"epoch": 2, "of_epochs": 3}
    assert [row["epoch"] for row in summary["history"]] == [1, 2]
    assert summary["history"][0]["lr"] == pytest.approx(0.002 / 4)  # the first warm-up step's lr
    assert all(row["grad_norm"] > 0 for row in summary["history"])
    assert all(row["val_accuracy"] <= row["val_top2_accuracy"] <= 1 for row in summary["history"])
    state = load_checkpoint(summary["checkpoint"])
    assert state["epoch"] == 2 and state["scheduler"]["last_epoch"] == 16  # 8 optimizer steps per epoch
    assert "square_avg" in next(iter(state["optimizer"]["state"].values()))  # RMSprop's state


def test_python_api_trains_on_ray_datasets_the_user_has(tmp_path):
    """``rayeffi.run(..., datasets=...)``: Ray Datasets with the user's own column names."""
    import ray.data

    train, val = (pq.read_table(path).rename_columns(["pixels", "digit"]) for path in builtin_digits_paths())
    result = rayeffi.run({
        "data": {"feature_column": "pixels", "label_column": "digit", "batch_size": 64},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "scaling": {"num_workers": 0},
        "stages": [{"name": "train", "kind": "train", "epochs": 2}],
    }, out=tmp_path / "run", datasets={"train": ray.data.from_arrow(train), "val": ray.data.from_arrow(val)})
    assert result.status == "complete" and result.metrics["val_accuracy"] > 0.8
    stage = result.stages["train"]
    assert stage["data_info"]["num_train"] == train.num_rows and stage["data_info"]["num_val"] == val.num_rows

    # the same digits as a table as it is (64 scalar pixel columns, an integer label): only the label is named
    as_columns = [pa.table({**{f"px{i}": pc.list_element(table["pixels"], i) for i in range(64)},
                            "digit": table["digit"]}) for table in (train, val)]
    columns = rayeffi.run({
        "data": {"label_column": "digit", "batch_size": 64},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "scaling": {"num_workers": 0},
        "stages": [{"name": "train", "kind": "train", "epochs": 2}],
    }, out=tmp_path / "columns", datasets={"train": ray.data.from_arrow(as_columns[0]),
                                           "val": ray.data.from_arrow(as_columns[1])})
    assert columns.stages["train"]["data_info"] == stage["data_info"]
    keys = ("train_loss", "val_loss", "val_accuracy")
    figures = [[{key: row[key] for key in keys} for row in run.stages["train"]["history"]] for run in (result, columns)]
    assert figures[0] == figures[1]  # the same numbers, step for step


def test_python_api_transforms_the_ray_datasets_the_user_has(tmp_path, monkeypatch):
    """``datasets=`` composes with ``data.transform``: the text the user's Ray Datasets hold is
    tokenised by the transform once written; a dict recipe imports from the current folder."""
    import ray.data

    examples = Path(__file__).resolve().parents[2] / "examples"
    monkeypatch.chdir(examples)  # text_topics.words and .model import from here, with no PYTHONPATH
    monkeypatch.setattr(sys, "path", list(sys.path))  # the driver's import path comes back as it was
    monkeypatch.delitem(sys.modules, "text_topics", raising=False)
    train, val = (pq.read_table(examples / "text_topics" / f"{split}.parquet") for split in ("train", "val"))
    result = rayeffi.run({
        "data": {"transform": "text_topics.words:tokenise", "feature_column": "input_ids", "batch_size": 16},
        "model": {"name": "text_topics.model:build", "kwargs": {"vocab_size": 64}},
        "optimizer": {"name": "adam", "lr": 0.05},
        "scaling": {"num_workers": 0},
        "stages": [{"name": "train", "kind": "train", "epochs": 3}],
    }, out=tmp_path / "run", datasets={"train": ray.data.from_arrow(train), "val": ray.data.from_arrow(val)})
    assert result.status == "complete" and result.metrics["val_accuracy"] > 0.6  # 4 topics: chance is 0.25
    assert result.stages["train"]["data_info"]["num_features"] == 12  # the transform's SEQ_LEN ids per row


# -- local mode: in process, without Ray, against Ray Train's local mode ------------------------------------------

TIMING_KEYS = {"samples_per_s", "train_s", "tokens_per_s", "epoch_s"}


def _run_stage_both_ways(stage, tmp_path):
    """The stage through Ray Train's local mode (``train_run.run_train``) and in process
    (``local_run.run_in_process``): ``{way: (summary entry, checkpoint state)}``."""
    from rayeffi.stages.local_run import run_in_process
    from rayeffi.stages.progress import Progress
    from rayeffi.stages.train_run import run_train
    import ray.data

    # Ray Data hands over a file's blocks as they finish unless told to keep their order: on a
    # busy machine the validation rows then came in another order (other batches, the last
    # bits of val_loss). In order, its rows are the files', as the in-process read's are.
    options = ray.data.DataContext.get_current().execution_options
    preserve_order, options.preserve_order = options.preserve_order, True
    results = {}
    try:
        for way, runner in (("ray", run_train), ("in_process", run_in_process)):
            source = resolve_source(stage.data, stage.seed, tmp_path / way / "data", stage.task)
            progress = Progress(lambda line: None, in_process=way == "in_process")
            context = StageContext(stage_dir=tmp_path / way / "stages" / stage.name,
                                   storage_path=tmp_path / way / "ray", source=source, previous=None,
                                   progress=progress, progress_queue=progress.queue)
            try:
                entry = runner(stage, context).summary()
            finally:
                progress.close()
            results[way] = entry, load_checkpoint(entry["checkpoint"])
    finally:
        options.preserve_order = preserve_order
    return results


def _without_timings(rows):
    return [{key: value for key, value in row.items() if key not in TIMING_KEYS} for row in rows]


@pytest.mark.parametrize("data", [
    {"dataset": "digits", "batch_size": 48, "max_samples": 600},
    {"dataset": "text", "seq_len": 16, "batch_size": 32, "max_samples": 256, "max_val_samples": 64},
], ids=["digits-shuffled", "tokens"])
def test_local_mode_in_process_equals_ray_trains_local_mode(tmp_path, data):
    """Same seed, same recipe: identical epoch metrics (timings aside) and identical weights and
    optimizer state, shuffled batches, dropout and a cosine schedule included, whether the
    loop runs under Ray Train's local mode or in the driver's process without Ray."""
    task = {"name": "language_modeling"} if data["dataset"] == "text" else {"name": "classification"}
    model = ({"name": "lm", "d_model": 16, "num_heads": 2, "num_layers": 1, "dropout": 0.1}
             if data["dataset"] == "text" else {"name": "mlp", "hidden_sizes": [32], "dropout": 0.2})
    stage = validate_recipe({
        "seed": 3, "task": task, "data": data, "model": model,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": {"name": "cosine"}},
        "scaling": {"num_workers": 0},
        "stages": [{"name": "train", "kind": "train", "epochs": 3}],
    }).stages[0]
    results = _run_stage_both_ways(stage, tmp_path)
    (ray_entry, ray_state), (local_entry, local_state) = results["ray"], results["in_process"]
    assert _without_timings(local_entry["history"]) == _without_timings(ray_entry["history"])
    assert [row["epoch"] for row in local_entry["history"]] == [1, 2, 3]
    for name, value in ray_state["model"].items():
        assert torch.equal(local_state["model"][name], value), name
    assert local_state["epoch"] == ray_state["epoch"] == 3
    assert set(local_entry) == set(ray_entry)  # the summary entry has the same shape


