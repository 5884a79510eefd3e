"""Every unreadable ``init_from`` weights file exits 2 with one ``error:`` line naming it, before Ray starts."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from rayeffi.cli import main
from rayeffi.data.info import DatasetInfo
from rayeffi.errors import UserError
from rayeffi.models import build_model
from rayeffi.recipe.sections import ModelConfig
from rayeffi.weights import load_weights, read_weights

DIGITS = DatasetInfo(64, 10, (1, 8, 8), 1437, 360)
RECIPE = "model: {{name: mlp, hidden_sizes: [16]}}\nstages: [{{name: train, kind: train, epochs: 1, init_from: {path}}}]\n"


def _model(hidden=(16,)):
    return build_model(ModelConfig(name="mlp", hidden_sizes=hidden), DIGITS)


class _Payload:
    """Unpickling this would run code: weights_only loading must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo owned",))


def _random_bytes(path):
    path.write_bytes(os.urandom(4096))


def _cut_in_half(path):
    torch.save({"format": 1, "model": _model().state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _directory_without_checkpoint(path):
    path.mkdir()
    (path / "notes.txt").write_text("no state.pt here")


def _no_model_key(path):
    torch.save({"weights": _model().state_dict()}, path)


def _other_shape(path):
    torch.save({"format": 1, "model": _model(hidden=(32,)).state_dict()}, path)


def _other_names(path):
    torch.save({"format": 1, "model": {"encoder.weight": torch.zeros(3)}}, path)


def _malicious_pickle(path):
    torch.save({"model": {}, "payload": _Payload()}, path)


def _plain_pickle(path):
    path.write_bytes(pickle.dumps({"model": {}}))


BAD_CHECKPOINTS = {
    "random bytes": (_random_bytes, "not a readable torch checkpoint"),
    "cut in half": (_cut_in_half, "cut short"),
    "directory without a checkpoint": (_directory_without_checkpoint, "is a folder without weights"),
    "torch file without a model key": (_no_model_key, "holds no state_dict (a dict of 'weights'"),
    "another model's shape": (_other_shape, "3 mis-shaped (layers.1.weight [32, 64] in the file vs [16, 64]"),
    "another model's names": (_other_names, "do not fit this model: 4 missing"),
    "malicious pickle": (_malicious_pickle, "refuses to load"),
    "plain pickle": (_plain_pickle, "not a readable torch checkpoint"),
}


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a bad checkpoint reached Ray")
    monkeypatch.setattr("rayeffi.driver.run.start_ray", refuse)


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_init_from_exits_2_naming_the_file(case, tmp_path, capsys, no_ray):
    make, expected = BAD_CHECKPOINTS[case]
    path = tmp_path / "ckpt.pt"
    make(path)
    (tmp_path / "r.yaml").write_text(RECIPE.format(path=path))
    code = main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: stages.train.init_from: "), err
    assert str(path) in lines[0] and expected in lines[0], lines[0]
    assert "Traceback" not in err and "owned" not in err


def test_matching_checkpoint_passes_the_driver_check(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"format": 1, "model": _model().state_dict()}, path)
    assert load_weights(_model(), read_weights(path)).fits


def test_shape_mismatch_names_the_parameter(tmp_path):
    path = tmp_path / "big.pt"
    _other_shape(path)
    with pytest.raises(UserError, match=r"layers.1.weight \[32, 64\] in the file vs \[16, 64\] in the model"):
        load_weights(_model(), read_weights(path))


LINKED = """
model: {{name: mlp, hidden_sizes: [16]}}
stages:
  - {{name: dense, kind: train, epochs: 1}}
  - {{name: finetune, kind: train, epochs: 1, init_from: {link}, model: {{name: mlp, hidden_sizes: {hidden}}}}}
"""


@pytest.mark.parametrize("link", ["dense", "previous"])
def test_a_stage_whose_model_the_earlier_stage_cannot_fill_exits_2_before_ray(link, tmp_path, capsys, no_ray):
    (tmp_path / "r.yaml").write_text(LINKED.format(link=link, hidden="[32]"))
    code = main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: stages.finetune.init_from: the weights of stage 'dense' do not fit this model")
    assert "layers.1.weight [16, 64] in the file vs [32, 64] in the model" in lines[0]


def test_a_stage_of_the_same_shape_passes_the_link_check(tmp_path):
    from rayeffi.recipe import load_recipe
    from rayeffi.driver.preflight import check_stage, check_stage_links

    (tmp_path / "r.yaml").write_text(LINKED.format(link="dense", hidden="[16]"))
    stages = load_recipe(tmp_path / "r.yaml").stages
    check_stage_links(stages, [check_stage(stage, tmp_path, {"dense", "finetune"}) for stage in stages])
