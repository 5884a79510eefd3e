"""Recipe validation, stage merging, --set overrides and --smoke (no Ray)."""

from __future__ import annotations

import pydantic
import pytest

from rayeffi.errors import UserError
from rayeffi.recipe import load_recipe

BASE = """
name: t
optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
data: {batch_size: 32}
scaling: {num_workers: 2}
stages:
  - {name: first, kind: train, epochs: 5}
  - name: second
    kind: train
    epochs: 3
    init_from: previous
    optimizer: {lr: 0.01}
    scaling: {num_workers: 0}
"""


def test_stage_inherits_globals_and_overrides_single_keys(write_recipe):
    recipe = load_recipe(write_recipe(BASE))
    first, second = recipe.stages
    assert first.optimizer.lr == 0.1 and first.optimizer.momentum == 0.9
    assert second.optimizer.lr == 0.01 and second.optimizer.momentum == 0.9  # merged, not replaced
    assert second.scaling.num_workers == 0 and first.scaling.num_workers == 2
    assert second.init_from.path == "previous"
    assert [s.name for s in recipe.stages] == ["first", "second"]


def test_recipe_is_frozen(write_recipe):
    recipe = load_recipe(write_recipe(BASE))
    with pytest.raises(pydantic.ValidationError):
        recipe.stages[0].epochs = 7


def test_set_reaches_globals_stages_by_name_and_index_and_parses_yaml(write_recipe):
    recipe = load_recipe(
        write_recipe(BASE),
        [
            "optimizer.lr=0.05",
            "stages.first.epochs=2",
            "stages.1.model.hidden_sizes=[32, 16]",
            "stages.second.optimizer.schedule.name=cosine",
        ],
    )
    first, second = recipe.stages
    assert first.optimizer.lr == 0.05
    assert second.optimizer.lr == 0.01  # the stage's own override still wins over the global
    assert first.epochs == 2
    assert second.model.hidden_sizes == (32, 16)
    assert second.optimizer.schedule.name == "cosine"


def test_smoke_shrinks_without_editing(write_recipe):
    path = write_recipe(BASE.replace("num_workers: 2", "num_workers: 4").replace("batch_size: 32", "batch_size: 64"))
    recipe = load_recipe(path, smoke=True)
    assert all(stage.epochs <= 2 for stage in recipe.stages)
    assert all(stage.data.max_samples <= 512 for stage in recipe.stages)
    assert recipe.stages[0].scaling.num_workers == 2
    assert load_recipe(path).stages[0].epochs == 5  # the file is untouched


def test_defaults_make_a_complete_stage(write_recipe):
    recipe = load_recipe(write_recipe("stages: [{name: only, kind: train}]"))
    stage = recipe.stages[0]
    assert stage.data.dataset == "digits" and stage.model.name == "mlp" and stage.precision.policy == "fp32"
    assert stage.parallel.strategy == "data_parallel" and stage.tune is None


def test_tune_block_shape_is_validated(write_recipe):
    text = BASE.replace(
        "stages:\n  - {name: first, kind: train, epochs: 5}",
        "stages:\n  - {name: first, kind: train, epochs: 5,"
        " tune: {search_space: {optimizer.lr: {loguniform: [0.001, 0.1]}}, num_samples: 3}}",
    )
    tune = load_recipe(write_recipe(text)).stages[0].tune
    assert tune.num_samples == 3 and tune.search_space["optimizer.lr"].loguniform == (0.001, 0.1)
    with pytest.raises(UserError, match="exactly one of"):
        load_recipe(write_recipe(text), ["stages.first.tune.search_space.epochs={choice: [1], uniform: [0, 1]}"])
    assert load_recipe(write_recipe(text), smoke=True).stages[0].tune.num_samples == 2


def test_a_local_mode_trial_holds_one_workers_resources(write_recipe):
    from rayeffi.stages.tune import trial_resources
    from rayeffi.stages.ray_session import TRIAL_RESOURCE

    text = BASE.replace(
        "stages:\n  - {name: first, kind: train, epochs: 5}",
        "stages:\n  - {name: first, kind: train, epochs: 5, tune: {search_space: {optimizer.lr: {grid: [0.1]}}}}",
    )
    path = write_recipe(text)
    on_train = load_recipe(path).stages[0]
    assert trial_resources(on_train) == {"cpu": 0, TRIAL_RESOURCE: 1}  # the Train run holds the workers
    local = load_recipe(path, ["scaling.num_workers=0", "scaling.resources_per_worker={CPU: 2, accel: 1}"]).stages[0]
    assert trial_resources(local) == {"cpu": 2, TRIAL_RESOURCE: 1, "accel": 1}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optimizer.lrr=1", "unknown key 'optimizer.lrr': did you mean 'optimizer.lr'"),
        ("optimizer.zzz=1", "unknown key 'optimizer.zzz'.*allowed here: .*lr, max_grad_norm, momentum"),
        ("stages.first.epoch=3", "unknown key 'stages.first.epoch': did you mean 'stages.first.epochs'"),
        ("model.hidden=64", "unknown key 'model.hidden': keyword arguments of your model's builder go under "
                            r"model.kwargs \(e.g. --set model.kwargs.hidden=...\)"),
        ("stages.first.epochs=0", "'stages.first.epochs'.*greater than 0"),
        ("stages.first.kind=prune", "'stages.first.kind' must be one of: train, distill, dsd"),
        ("data.batch_size=33", "does not split evenly over scaling.num_workers 2"),
        ("scaling.num_workers=-2", "'scaling.num_workers'"),
        ("model.name=not a model", "neither a built-in model"),
        ("data.dataset=parquet", "needs data.path"),
        ("stages.first.init_from=previous", "first stage"),
        ("stages.second.name=first", "used twice"),
        ("optimizer.lr=abc", "'optimizer.lr'.*valid number"),
    ],
)
def test_bad_values_name_the_key(write_recipe, override, expected):
    with pytest.raises(UserError, match=expected):
        load_recipe(write_recipe(BASE), [override])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optimizer.lr", "write --set dotted.key=value"),
        ("=3", "write --set dotted.key=value"),
        ("stages.nope.epochs=1", "no stage named 'nope'; stages are: first, second"),
        ("optimizer.lr.x=1", "optimizer.lr is a value, not a section"),
        ("data.batch_size=[1, 2", "not valid YAML"),
    ],
)
def test_bad_overrides(write_recipe, override, expected):
    with pytest.raises(UserError, match=expected):
        load_recipe(write_recipe(BASE), [override])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "is empty"),
        ("stages: [\n", "fix the YAML syntax"),
        ("- a\n- b\n", "must be a mapping"),
        ("name: x\n", "'stages' is required"),
        ("stages: []\n", "'stages'.*at least 1"),
        ("stages: [{name: a}]\n", "needs a 'kind'"),
        ("stages: [{name: 1bad, kind: train}]\n", "must start with a letter"),
    ],
)
def test_malformed_files(write_recipe, text, expected):
    with pytest.raises(UserError, match=expected):
        load_recipe(write_recipe(text))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
