"""``rayeffi bench dsd|distill --workload``: the arms each seed's recipe builds, and the paired
statistics the benches print (pure: no training, no Ray)."""

from __future__ import annotations

import argparse

import pytest

from rayeffi.bench.distill import LM_STUDENT, LM_TEACHER, lm_recipe
from rayeffi.bench.distill import run as run_distill
from rayeffi.bench.dsd import SEQUENCE_SPARSITIES, dsd_arm, paired, sequence_recipe
from rayeffi.bench.dsd import run as run_dsd
from rayeffi.errors import UserError


@pytest.mark.parametrize(("workload", "model_name"), [("lm", "lm"), ("lstm", "lstm_lm")])
@pytest.mark.parametrize("quick", [True, False])
def test_dsd_sequence_recipe_builds_the_dense_run_and_three_equal_epoch_arms(workload, model_name, quick):
    recipe = sequence_recipe(3, workload, (0.3, 0.5), quick)
    stages = {stage.name: stage for stage in recipe.stages}
    assert list(stages) == ["dense", "same_schedule", "decayed", "dsd-s30", "dsd-s50"]
    assert recipe.seed == 3 and recipe.task.name == "language_modeling" and recipe.model.name == model_name
    assert recipe.data.dataset == "text" and recipe.scaling.num_workers == 0 and recipe.precision.policy == "fp32"
    assert (recipe.data.max_samples is not None) == quick
    dense, control, decayed = stages["dense"], stages["same_schedule"], stages["decayed"]
    assert dense.init_from is None
    assert all(stage.init_from.path == "dense" for name, stage in stages.items() if name != "dense")
    # the same schedule in every arm but one: nothing pruned in the control, the target in DSD
    sparsities = lambda name: [r.sparsity for r in stages[name].dsd.rounds]  # noqa: E731
    assert sparsities("same_schedule") == [0.0]
    assert sparsities("dsd-s30") == [0.3] and sparsities("dsd-s50") == [0.5]
    for name in ("dsd-s30", "dsd-s50"):
        arm = stages[name].dsd
        assert (arm.sparse_epochs, arm.redense_epochs, arm.redense_lr_factor) == (
            control.dsd.sparse_epochs, control.dsd.redense_epochs, control.dsd.redense_lr_factor)
        assert arm.redense_lr_factor == 0.1
    # the decayed control: the same extra epochs, at lr / 10
    assert decayed.epochs == control.dsd.sparse_epochs + control.dsd.redense_epochs
    assert decayed.optimizer.lr == pytest.approx(recipe.optimizer.lr / 10)


def test_dsd_arm_names_are_stage_names_for_every_sparsity():
    assert [dsd_arm(s) for s in SEQUENCE_SPARSITIES] == ["dsd-s30", "dsd-s50"]
    assert dsd_arm(0.875) == "dsd-s88" and dsd_arm(0.05) == "dsd-s5"


def test_distill_lm_recipe_pairs_a_half_width_student_alone_and_with_kd_per_seed():
    recipe = lm_recipe(3, quick=True)
    stages = {stage.name: stage for stage in recipe.stages}
    assert list(stages) == ["teacher", "alone-0", "kd-0", "alone-1", "kd-1", "alone-2", "kd-2"]
    assert stages["teacher"].model.d_model == LM_TEACHER["d_model"] == 2 * LM_STUDENT["d_model"]
    for seed in range(3):
        alone, kd = stages[f"alone-{seed}"], stages[f"kd-{seed}"]
        assert alone.seed == kd.seed == seed and alone.epochs == kd.epochs
        assert alone.model == kd.model and alone.model.d_model == LM_STUDENT["d_model"]
        assert alone.kind == "train" and kd.kind == "distill" and [t.stage for t in kd.distill.teachers] == ["teacher"]
    assert recipe.task.name == "language_modeling" and recipe.scaling.num_workers == 0


def test_paired_counts_wins_in_the_direction_of_the_metric():
    lower = paired([5.0, 7.0, 4.0], [6.0, 6.0, 6.0], lower_is_better=True)
    assert lower["differences"] == [-1.0, 1.0, -2.0]
    assert lower["mean"] == pytest.approx(-2 / 3) and lower["sd"] == pytest.approx(1.5275252)
    assert (lower["min"], lower["max"], lower["wins"]) == (-2.0, 1.0, 2)
    higher = paired([5.0, 7.0, 4.0], [6.0, 6.0, 6.0], lower_is_better=False)
    assert higher["wins"] == 1
    ties = paired([1.0, 2.0], [1.0, 2.0], lower_is_better=True)
    assert ties["wins"] == 0 and ties["mean"] == 0.0


def test_paired_with_one_seed_has_no_spread_and_rejects_unpaired_lists():
    assert paired([2.0], [3.0], lower_is_better=True)["sd"] == 0.0
    with pytest.raises(ValueError):
        paired([1.0, 2.0], [1.0], lower_is_better=True)


@pytest.mark.parametrize(("run", "argv", "message"), [
    (run_dsd, {"workload": "cnn"}, "--workload cnn"),
    (run_dsd, {"workload": "lm", "regimes": ["full-data"]}, "--regimes"),
    (run_distill, {"workload": "lstm"}, "--workload lstm"),
])
def test_a_workload_a_bench_does_not_have_is_one_user_error(run, argv, message):
    args = argparse.Namespace(**{"seeds": 1, "quick": True, "regimes": None, "dataset": "digits", **argv})
    with pytest.raises(UserError, match=message):
        run(args)
