"""A stage's ``techniques:`` list: any stage carries any registered techniques in order,
``kind: distill`` / ``kind: dsd`` are sugar for a one-item list, one compatibility table
decides what combines, and Tune addresses list items by position or by name."""

from __future__ import annotations

import pytest

from rayeffi.errors import UserError
from rayeffi.recipe import load_recipe, validate_recipe
from rayeffi.recipe.compat import RULES, compatibility_table
from rayeffi.recipe.techniques import TECHNIQUE_CONFIGS
from rayeffi.stages.tune import check_search_space, stage_variant
from rayeffi.techniques import TECHNIQUES

DSD = {"name": "dsd", "rounds": [0.5], "sparse_epochs": 2, "redense_epochs": 2}
KD = {"name": "distill", "teachers": ["teacher"], "temperature": 4.0, "alpha": 0.7}


def _recipe(student: dict, **globals_):
    return validate_recipe({
        **globals_,
        "stages": [{"name": "teacher", "kind": "train", "epochs": 2, "model": {"name": "cnn"}},
                   {"name": "dense", "kind": "train", "epochs": 2},
                   {"name": "student", "kind": "train", "init_from": "dense", **student}],
    })


def test_the_recipe_and_the_code_register_the_same_techniques():
    assert set(TECHNIQUE_CONFIGS) == set(TECHNIQUES)


def test_a_train_stage_prunes_and_distils_in_list_order():
    stage = _recipe({"techniques": [DSD, KD]}).stage("student")
    assert [config.name for config in stage.technique_configs] == ["dsd", "distill"]
    assert stage.total_epochs == 4  # DSD's phases set the stage's epochs
    teacher = stage.techniques[1].teachers[0]
    assert teacher.stage == "teacher" and teacher.model.name == "cnn"  # the teacher stage's model comes along
    assert [key for key, _ in stage.technique_keys()] == ["stages.student.techniques.0", "stages.student.techniques.1"]


def test_kind_sugar_is_a_one_item_list():
    sugar = _recipe({"kind": "dsd", "dsd": {k: v for k, v in DSD.items() if k != "name"}}).stage("student")
    listed = _recipe({"techniques": [DSD]}).stage("student")
    assert sugar.technique_configs == listed.technique_configs
    assert sugar.total_epochs == listed.total_epochs == 4
    both = _recipe({"kind": "distill", "distill": {"teachers": ["teacher"]}, "techniques": [DSD]}).stage("student")
    assert [config.name for config in both.technique_configs] == ["distill", "dsd"]


@pytest.mark.parametrize(("student", "message"), [
    ({"techniques": [DSD, DSD]}, "technique 'dsd' is given 2 times"),
    ({"epochs": 3, "techniques": [DSD]}, "technique 'dsd' sets the stage's epochs"),
    ({"techniques": [{"name": "prune"}]}, "'stages.student.techniques.0.name' must be one of: distill, dsd"),
    ({"techniques": [{"rounds": [0.5]}]}, "'stages.student.techniques.0.name' must be one of: distill, dsd"),
    ({"techniques": [{**DSD, "sparsity": 0.5}]}, "unknown key 'stages.student.techniques.0.sparsity'"),
    ({"techniques": [{**KD, "teachers": ["student"]}]}, "teacher 'student' is not an earlier stage"),
    ({"init_from": None, "techniques": [DSD]}, "needs dense weights to prune"),
    ({"techniques": [DSD], "precision": "fp16-master"}, "technique dsd: is not supported yet"),
])
def test_bad_technique_lists_name_the_key(student, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        _recipe(student)


def test_one_table_decides_at_load_what_run_would_reject():
    # an intra_layer stage in bf16, or a pipelined student, fails when the recipe is validated
    with pytest.raises(UserError, match="intra_layer with precision bf16.*runs fp32 only"):
        validate_recipe({"precision": "bf16", "scaling": {"num_workers": 2},
                         "parallel": {"strategy": "intra_layer"}, "model": {"name": "cnn"},
                         "stages": [{"name": "s", "kind": "train"}]})
    with pytest.raises(UserError, match="pipeline with technique distill"):
        _recipe({"techniques": [KD], "scaling": {"num_workers": 2},
                 "parallel": {"strategy": "pipeline", "num_stages": 2, "num_microbatches": 2}})
    rows = compatibility_table()
    assert len(rows) == len(RULES) and all(row["reason"] and row["fix"] for row in rows)


def test_tune_addresses_list_items_by_position_and_by_name():
    stage = _recipe({"techniques": [DSD, KD], "scaling": {"num_workers": 1},
                     "tune": {"search_space": {"techniques.0.rounds": {"choice": [[0.3], [0.6]]},
                                               "techniques.distill.alpha": {"uniform": [0.2, 0.9]}}}}).stage("student")
    check_search_space(stage)
    variant = stage_variant(stage, {"techniques.0.rounds": [0.6], "techniques.distill.alpha": 0.3})
    assert variant.techniques[0].rounds[0].sparsity == 0.6 and variant.techniques[1].alpha == 0.3
    assert variant.tune is None


def test_smoke_shrinks_list_items_too(write_recipe):
    text = """
stages:
  - {name: dense, kind: train, epochs: 9}
  - name: student
    kind: train
    init_from: dense
    techniques: [{name: dsd, rounds: [0.5, 0.25], sparse_epochs: 6, redense_epochs: 6}]
"""
    recipe = load_recipe(write_recipe(text), smoke=True)
    assert recipe.stage("student").total_epochs == 4  # one epoch per phase


def test_each_config_says_whether_its_technique_adds_a_loss_term():
    """The flag the compatibility table reads agrees with the code: a technique that overrides
    ``Technique.loss`` declares ``adds_loss``, so no strategy that runs its own loss drops it."""
    from rayeffi.techniques.base import Technique
    from rayeffi.techniques.distill import Distillation
    from rayeffi.techniques.dsd import DenseSparseDense

    classes = {"distill": Distillation, "dsd": DenseSparseDense}
    assert set(classes) == set(TECHNIQUES)
    for name, config in TECHNIQUE_CONFIGS.items():
        assert config.adds_loss == (classes[name].loss is not Technique.loss), name


def test_a_pipeline_refuses_any_technique_that_adds_a_loss_term():
    import torch

    from rayeffi.parallel import Pipeline
    from rayeffi.techniques.base import Technique
    from rayeffi.worker.build import assemble

    class AddsLoss(Technique):
        name = "adds_loss"

        def loss(self, loss, outputs, inputs, targets, extras):
            return loss * 2

    pipeline = Pipeline.__new__(Pipeline)  # the guard reads the class: no process group needed
    pipeline.name = "pipeline"
    with pytest.raises(UserError, match="cannot add the loss term of technique adds_loss"):
        assemble(torch.nn.Linear(2, 2), pipeline, None, None, [AddsLoss()])
