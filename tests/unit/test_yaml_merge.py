"""YAML merge keys (``<<: *defaults``) in recipes: YAML 1.1's rules, duplicates still refused."""

from __future__ import annotations

import pytest

from rayeffi.errors import UserError
from rayeffi.recipe import load_recipe
from rayeffi.recipe.load import safe_load_unique

ONE_MAPPING = """
optimizer: &defaults {lr: 0.05, momentum: 0.8}
stages:
  - {name: a, kind: train, epochs: 1}
  - name: b
    kind: train
    epochs: 1
    optimizer:
      <<: *defaults
      lr: 0.01
"""


def test_one_merged_mapping_with_an_explicit_override(write_recipe):
    recipe = load_recipe(write_recipe(ONE_MAPPING))
    assert recipe.stage("a").optimizer.lr == 0.05
    assert (recipe.stage("b").optimizer.lr, recipe.stage("b").optimizer.momentum) == (0.01, 0.8)


def test_a_list_of_mappings_earlier_wins_and_explicit_keys_win_over_all():
    loaded = safe_load_unique("a: &a {x: 1, y: 1}\nb: &b {x: 2, z: 2}\n"
                              "c: {<<: [*a, *b], w: 0}\nd: {<<: [*b, *a], z: 5}\n")
    assert loaded["c"] == {"x": 1, "y": 1, "z": 2, "w": 0}
    assert loaded["d"] == {"x": 2, "y": 1, "z": 5}


def test_a_whole_stage_merged_from_an_anchor(write_recipe):
    text = ("stages:\n  - &base {name: a, kind: train, epochs: 2, data: {batch_size: 32}}\n"
            "  - {<<: *base, name: b, epochs: 3}\n")
    recipe = load_recipe(write_recipe(text))
    assert [(s.name, s.epochs, s.data.batch_size) for s in recipe.stages] == [("a", 2, 32), ("b", 3, 32)]


@pytest.mark.parametrize("text", [
    "a: &a {x: 1}\nb: {<<: *a, y: 1, y: 2}\n",  # written twice beside a merge
    "b: {x: 1, x: 2}\n",                         # written twice, no merge
])
def test_explicit_keys_written_twice_are_still_refused(text):
    with pytest.raises(UserError, match="appears twice in one mapping"):
        safe_load_unique(text)


def test_a_merge_into_the_wrong_section_names_the_key_and_the_section(write_recipe):
    text = ("optimizer: &opt {lr: 0.05}\n"
            "stages:\n  - name: a\n    kind: train\n    data:\n      <<: *opt\n      batch_size: 32\n")
    with pytest.raises(UserError, match=r"unknown key 'stages\.a\.data\.lr'.*allowed here: .*batch_size"):
        load_recipe(write_recipe(text))
