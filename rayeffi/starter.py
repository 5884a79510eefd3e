"""``rayeffi init`` (a starter recipe and model file that run as they are) and ``rayeffi schema``
(the recipe's JSON Schema, for an editor's completion and checks)."""

from __future__ import annotations

import json
from pathlib import Path

from rayeffi.errors import UserError

RECIPE = """\
# A starter recipe. It runs as it is:
#   rayeffi run recipe.yaml --smoke          # a CI-sized run, about half a minute
#   rayeffi run recipe.yaml --set scaling.num_workers=0 --smoke   # local mode, in this process
#   rayeffi validate recipe.yaml             # every check, and the plan, without training
# Every key: `rayeffi schema` (JSON Schema) and docs/recipes.md.
name: starter
seed: 0
task: classification            # | regression | language_modeling | token_classification

data:
  dataset: digits               # built in (8x8 handwritten digits); for your own table:
  # dataset: parquet
  # path: train.parquet         # relative to this file; numeric columns become the features
  # label_column: label
  # val_path: val.parquet       # or val_fraction: 0.2
  batch_size: 64                # global: split over the workers

model:
  name: my_model:build          # my_model.py beside this file: build(num_features, num_classes, ...)
  kwargs: {hidden: 128}

optimizer:
  name: adamw
  lr: 0.001
  schedule: {name: cosine}

scaling:
  num_workers: 2                # Ray Train workers; 0: local mode, in the driver process

precision: fp32                 # bf16 | fp16 | fp16-master

stages:
  - {name: train, kind: train, epochs: 5}
  # Dense-Sparse-Dense from the trained weights: prune half of each layer, retrain, re-densify
  # - name: dsd
  #   kind: dsd
  #   init_from: train
  #   dsd: {rounds: [0.5], sparse_epochs: 3, redense_epochs: 2}
"""

MODEL = '''\
"""Your model. rayeffi calls build() with the data's shape (num_features, num_classes, and
image_shape or vocab_size where its signature takes them) and the recipe's model.kwargs."""

from torch import nn


def build(num_features: int, num_classes: int, hidden: int = 128) -> nn.Module:
    return nn.Sequential(
        nn.Linear(num_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
'''

FILES = {"recipe.yaml": RECIPE, "my_model.py": MODEL}


def write_starter(folder: str | Path) -> list[Path]:
    """Write the starter recipe and model file into ``folder``; refuse to replace a file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"init: {folder.absolute()} is a file: give a folder for the starter recipe")
    existing = [name for name in FILES if (folder / name).exists()]
    if existing:
        raise UserError(f"init: {folder.absolute() / existing[0]} already exists: give an empty or new folder "
                        "(rayeffi init DIR)")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in FILES.items():
        (folder / name).write_text(text)
        paths.append(folder / name)
    return paths


def recipe_schema() -> str:
    """The JSON Schema of a recipe, from the pydantic models that validate it."""
    from rayeffi.recipe.models import Recipe

    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "rayeffi recipe"
    return json.dumps(schema, indent=2)
