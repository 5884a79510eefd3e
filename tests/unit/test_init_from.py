"""``init_from`` and teachers' ``checkpoint`` from weights as people have them: the recipe's long
form, the driver's checks before Ray starts (one ``error:`` line, strict: false's one note), and
the loads on the workers (``worker/build.py: initial_model``) and of teachers."""

from __future__ import annotations

import pytest
import torch

from rayeffi.cli import main
from rayeffi.data.info import DatasetInfo
from rayeffi.models import build_model
from rayeffi.recipe import load_recipe
from rayeffi.recipe.sections import ModelConfig
from rayeffi.techniques.distill.technique import load_teachers
from rayeffi.worker.build import initial_model

DIGITS = DatasetInfo(64, 10, (1, 8, 8), 1437, 360)
MLP = "{name: mlp, hidden_sizes: [16]}"


def _trained(hidden=(16,)) -> torch.nn.Module:
    torch.manual_seed(7)
    return build_model(ModelConfig(name="mlp", hidden_sizes=hidden), DIGITS)


def _recipe(tmp_path, init_from: str, model: str = MLP):
    path = tmp_path / "r.yaml"
    path.write_text(f"model: {model}\nstages: [{{name: train, kind: train, epochs: 1, init_from: {init_from}}}]\n")
    return path


def _validate(path, capsys) -> tuple[int, list[str], list[str]]:
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.strip().splitlines()


def test_the_long_form_parses_and_the_short_form_dumps_as_written(tmp_path):
    weights = tmp_path / "w.pt"
    weights.touch()  # a relative path becomes the absolute one beside the recipe (recipe/paths.py)
    long = load_recipe(_recipe(tmp_path, "{path: w.pt, prefix: 'model.', strict: false}")).stages[0]
    assert (long.init_from.path, long.init_from.prefix, long.init_from.strict) == (str(weights), "model.", False)
    assert long.model_dump(mode="json")["init_from"] == {"path": str(weights), "strict": False, "prefix": "model."}
    short = load_recipe(_recipe(tmp_path, "w.pt")).stages[0]
    assert (short.init_from.path, short.init_from.prefix, short.init_from.strict) == (str(weights), "", True)
    assert short.model_dump(mode="json")["init_from"] == str(weights)  # summary.json and --resume read as before


def test_an_unknown_long_form_key_is_one_error_line(tmp_path, capsys):
    code, _, err = _validate(_recipe(tmp_path, "{path: w.pt, prefx: 'model.'}"), capsys)
    assert code == 2 and len(err) == 1 and "unknown key 'stages.train.init_from.prefx'" in err[0], err


def test_a_prefixed_state_dict_fails_before_ray_naming_the_prefix_and_loads_with_it(tmp_path, capsys):
    weights = tmp_path / "pretrained.pt"
    torch.save({f"model.{name}": value for name, value in _trained().state_dict().items()}, weights)
    code, _, err = _validate(_recipe(tmp_path, str(weights)), capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: stages.train.init_from: weights {weights} do not fit this model: 4 missing "
                             "(layers.1.weight, layers.1.bias, layers.3.weight, ...), 4 unexpected")
    assert err[0].endswith("every key in the file starts with 'model.': set init_from.prefix: 'model.'")

    recipe = _recipe(tmp_path, f"{{path: {weights}, prefix: 'model.'}}")
    code, out, err = _validate(recipe, capsys)
    assert code == 0 and not err and "starts from " + str(weights) in "\n".join(out)
    model = initial_model(load_recipe(recipe).stages[0], DIGITS, str(weights))  # what every worker does
    for name, value in _trained().state_dict().items():
        assert torch.equal(model.state_dict()[name], value)


def test_strict_false_prints_what_it_skips_once_and_the_workers_load_the_rest(tmp_path, capsys):
    trained = _trained()
    weights = tmp_path / "partial.pt"
    state = {name: value for name, value in trained.state_dict().items() if not name.startswith("layers.3.")}
    torch.save({"state_dict": {**state, "head.weight": torch.zeros(2, 2)}}, weights)
    code, _, err = _validate(_recipe(tmp_path, str(weights)), capsys)
    assert code == 2 and "2 missing (layers.3.weight, layers.3.bias), 1 unexpected (head.weight)" in err[0]
    assert err[0].endswith("or set init_from.strict: false to load what fits")

    recipe = _recipe(tmp_path, f"{{path: {weights}, strict: false}}")
    code, out, err = _validate(recipe, capsys)
    notes = [line for line in out if "strict: false" in line]
    assert code == 0 and not err and notes == [
        f"[train] stages.train.init_from: loaded 2 of the model's 4 tensors from weights {weights} (strict: false); "
        "skipped 2 missing (layers.3.weight, layers.3.bias), 1 unexpected (head.weight); the model's skipped "
        "tensors keep their initial values"]
    torch.manual_seed(0)
    fresh = build_model(ModelConfig(name="mlp", hidden_sizes=(16,)), DIGITS)
    model = initial_model(load_recipe(recipe).stages[0], DIGITS, str(weights))
    assert torch.equal(model.layers[1].weight, trained.layers[1].weight)
    assert torch.equal(model.layers[3].weight, fresh.layers[3].weight)  # the stage's seed: its initial values


def test_a_missing_relative_path_names_the_absolute_path_it_tried(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _validate(_recipe(tmp_path, "weights/pretrained.pt"), capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: stages.train.init_from: weights/pretrained.pt is not there (tried "
                             f"{tmp_path / 'weights' / 'pretrained.pt'})")


def test_a_hugging_face_folder_fills_a_classifiers_backbone(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from rayeffi.models.hf import bert_classifier

    torch.manual_seed(3)
    pretrained = bert_classifier(64, 10).bert  # a BertModel, saved as people download them
    assert isinstance(pretrained, transformers.BertModel)
    pretrained.save_pretrained(tmp_path / "bert-base")
    model = "{name: 'rayeffi.models.hf:bert_classifier'}"
    code, _, err = _validate(_recipe(tmp_path, str(tmp_path / "bert-base"), model), capsys)
    assert code == 2 and err[0].endswith("the file fits this model's part under 'bert.': set init_from.prefix: 'bert.'")
    recipe = _recipe(tmp_path, f"{{path: {tmp_path / 'bert-base'}, prefix: 'bert.'}}", model)
    assert _validate(recipe, capsys)[0] == 0
    loaded = initial_model(load_recipe(recipe).stages[0], DIGITS, str(tmp_path / "bert-base"))
    for name, value in pretrained.state_dict().items():
        assert torch.equal(loaded.bert.state_dict()[name], value), name


DISTILL = """
model: {{name: mlp, hidden_sizes: [8]}}
stages:
  - name: student
    kind: distill
    epochs: 1
    distill: {{teachers: [{{checkpoint: {path}, model: {{name: mlp, hidden_sizes: [16]}}{extra}}}]}}
"""


def test_a_teacher_from_a_plain_state_dict(tmp_path, capsys):
    trained = _trained()
    weights = tmp_path / "teacher.pth"
    torch.save({f"module.{name}": value for name, value in trained.state_dict().items()}, weights)  # saved from DDP
    recipe = tmp_path / "d.yaml"
    recipe.write_text(DISTILL.format(path=weights, extra=""))
    assert _validate(recipe, capsys)[0] == 0
    stage = load_recipe(recipe).stages[0]
    (teacher,) = load_teachers(stage.distill, DIGITS)
    for name, value in trained.state_dict().items():
        assert torch.equal(teacher.state_dict()[name], value)

    recipe.write_text(DISTILL.format(path=weights, extra=", prefix: 'encoder.'"))
    code, _, err = _validate(recipe, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(
        f"error: stages.student.distill.teachers.0: weights {weights} do not fit this model: no key of the file "
        "or of the model starts with prefix 'encoder.'"), err
    assert err[0].endswith("the keys fit without a prefix: remove distill.teachers.0.prefix")  # module. goes anyway
