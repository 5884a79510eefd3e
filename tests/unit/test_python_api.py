"""The Python API without Ray: ``load_recipe`` on a dict or a Recipe, ``validate`` (the GPU
check as ``run`` makes it), wrong model objects, and ``load_model`` on a run directory."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import rayeffi
from rayeffi.checkpoint import save_atomic
from rayeffi.cli import main
from rayeffi.data.info import DatasetInfo
from rayeffi.models import build_model

STAGES = [{"name": "train", "kind": "train", "epochs": 3}]


def tiny_net(num_features, num_classes, image_shape=None, hidden=8):
    return nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class TinyNet(nn.Module):
    def __init__(self, num_features, num_classes, image_shape=None):
        super().__init__()
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, inputs):
        return self.linear(inputs)


def _one_line_error(call) -> str:
    with pytest.raises(rayeffi.UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_dict_loads_like_the_same_yaml_file(write_recipe):
    raw = {"optimizer": {"lr": 0.05}, "stages": STAGES}
    path = write_recipe("optimizer: {lr: 0.05}\nstages: [{name: train, kind: train, epochs: 3}]\n")
    assert rayeffi.load_recipe(raw) == rayeffi.load_recipe(path)
    overridden = rayeffi.load_recipe(raw, ["stages.train.epochs=5"])
    assert overridden.stages[0].epochs == 5 and raw["stages"][0]["epochs"] == 3  # the caller's dict is untouched
    recipe = rayeffi.load_recipe(raw)
    assert rayeffi.load_recipe(recipe) == recipe  # a Recipe is checked again, as it is
    assert rayeffi.load_recipe(recipe, ["optimizer.lr=0.2"]).stages[0].optimizer.lr == 0.2


def test_a_dicts_mistakes_are_one_line_naming_the_key():
    message = _one_line_error(lambda: rayeffi.load_recipe({"stages": [{"name": "train", "kind": "train",
                                                                        "optimizer": {"lrr": 0.1}}]}))
    assert message.startswith("recipe: unknown key 'stages.train.optimizer.lrr': did you mean 'stages.train.optimizer.lr'")
    message = _one_line_error(lambda: rayeffi.load_recipe({"optimizer": {"lr": math.inf}, "stages": STAGES}))
    assert message.startswith("recipe: 'optimizer.lr' is inf")
    assert "got list" in _one_line_error(lambda: rayeffi.load_recipe([STAGES]))


def test_smoke_shrinks_a_dict():
    recipe = rayeffi.load_recipe({"scaling": {"num_workers": 4}, "stages": STAGES}, smoke=True)
    stage = recipe.stages[0]
    assert stage.epochs == 2 and stage.data.max_samples == 512 and stage.scaling.num_workers == 2


@pytest.mark.parametrize("wrong, says", [
    (3, "an object of type int builds no torch.nn.Module"),
    (dict, "class dict builds no torch.nn.Module"),
    (nn.Linear(2, 2), "an instance of Linear; pass its class"),
])
def test_a_wrong_model_object_is_one_line(wrong, says, tmp_path):
    assert says in _one_line_error(lambda: rayeffi.run({"stages": STAGES}, out=tmp_path, model=wrong))
    assert says in _one_line_error(lambda: rayeffi.validate({"stages": STAGES}, model=wrong))
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("wrong, says", [
    ([1, 2], "give a mapping with a 'train' Ray Dataset"),
    ({"val": None}, "give a mapping with a 'train' Ray Dataset"),
    ({"train": None, "test": None}, "unknown split(s) ['test']"),
    ({"train": "rows.parquet"}, "datasets['train']: a ray.data.Dataset is needed, got str"),
])
def test_wrong_datasets_are_one_line(wrong, says, tmp_path):
    assert says in _one_line_error(lambda: rayeffi.run({"stages": STAGES}, out=tmp_path, datasets=wrong))
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("builder", [tiny_net, TinyNet], ids=["function", "module-class"])
def test_validate_checks_a_model_builder_and_names_it(builder):
    recipe = {"data": {"max_samples": 64}, "model": {"kwargs": {"hidden": 4}} if builder is tiny_net else {},
              "stages": STAGES + [{"name": "more", "kind": "train", "epochs": 1, "init_from": "train",
                                   "model": {"name": "cnn"}}]}
    lines = rayeffi.validate(recipe, model=builder)
    assert len(lines) == 3 and all(f"model {__name__}:{builder.__qualname__}" in line for line in lines[1:])


def test_validate_refuses_gpus_this_machine_lacks_as_run_does(monkeypatch, write_recipe, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    raw = {"scaling": {"num_workers": 0, "use_gpu": True}, "stages": STAGES}
    assert "asks for 1 GPUs" in _one_line_error(lambda: rayeffi.validate(raw))
    path = write_recipe("scaling: {num_workers: 2, use_gpu: true}\nstages: [{name: train, kind: train}]\n")
    assert main(["validate", str(path)]) == 2
    validate_err = capsys.readouterr().err.strip().splitlines()
    assert main(["run", str(path), "--out", str(path.parent / "out")]) == 2
    run_err = capsys.readouterr().err.strip().splitlines()
    assert len(validate_err) == 1 and validate_err == run_err
    assert validate_err[0].startswith("error: stages.train.scaling: asks for 2 GPUs")


def _fake_run(tmp_path, recipe, data_info=True):
    """A run directory as rayeffi.run leaves it, written without Ray: summary.json and a checkpoint."""
    loaded = rayeffi.load_recipe(recipe)
    info = DatasetInfo(64, 10, (1, 8, 8), 1437, 360)
    model = build_model(loaded.stages[0].model, info)
    checkpoint = save_atomic({"model": model.state_dict()}, tmp_path / "stages" / "train" / "checkpoint.pt")
    entry = {"name": "train", "kind": "train", "metrics": {"val_accuracy": 0.5}, "checkpoint": str(checkpoint)}
    if data_info:
        entry["data_info"] = {"num_features": 64, "num_classes": 10, "image_shape": [1, 8, 8],
                              "num_train": 1437, "num_val": 360, "vocab_size": None}
    summary = {"recipe": loaded.model_dump(mode="json"), "status": "complete", "stages": [entry]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return model


@pytest.mark.parametrize("data_info", [True, False], ids=["summary", "older-summary"])
def test_load_model_rebuilds_the_stage_and_loads_its_weights(tmp_path, data_info):
    trained = _fake_run(tmp_path, {"model": {"hidden_sizes": [16]}, "stages": STAGES}, data_info)
    loaded = rayeffi.load_model(tmp_path, "train")
    assert not loaded.training
    for name, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)


def test_load_model_of_a_builder_run_takes_the_builder_again(tmp_path):
    trained = _fake_run(tmp_path, {"model": {"builder": tiny_net}, "stages": STAGES})
    loaded = rayeffi.load_model(tmp_path, model=tiny_net)
    assert torch.equal(loaded[0].weight, trained[0].weight)
    # the summary names an importable function here, so it also loads without the object
    assert torch.equal(rayeffi.load_model(tmp_path)[0].weight, trained[0].weight)


def test_load_model_errors_name_what_exists(tmp_path):
    assert "does not exist" in _one_line_error(lambda: rayeffi.load_model(tmp_path / "nowhere"))
    assert "has no summary.json" in _one_line_error(lambda: rayeffi.load_model(tmp_path))
    _fake_run(tmp_path, {"stages": STAGES})
    message = _one_line_error(lambda: rayeffi.load_model(tmp_path, "fine_tune"))
    assert "no stage 'fine_tune'" in message and "finished stages are train" in message
    assert "an instance of" in _one_line_error(lambda: rayeffi.load_model(tmp_path, model=nn.Linear(2, 2)))
