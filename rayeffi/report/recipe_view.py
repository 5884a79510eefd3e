"""The resolved recipe as a report shows it: once, without the defaults that do not apply.

``summary.json``'s ``recipe`` is ``Recipe.model_dump``: every global section with all its
defaults, and every stage with the global sections merged in again. The report shows the
globals once, each stage by what it sets or changes, and drops every key that still holds
its default and that the stage cannot read (``model.d_model`` of an MLP, ``data.synthetic``
of Parquet data). A key a user set is never dropped, whatever the model or data.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from rayeffi.recipe.sections import BUILTIN_MODELS, DataConfig, ModelConfig, PrecisionConfig, TaskConfig
from rayeffi.recipe.stage import StageConfig
from rayeffi.recipe.step_options import OptimizerConfig
from rayeffi.techniques.dsd.config import DsdRound

Config = dict[str, Any]

_PER_TOKEN_TASKS = ("language_modeling", "token_classification")
_LOSS_SCALED = ("fp16", "fp16-master")


def _model(config: Config) -> str:
    return config["model"]["name"]


def _dataset(config: Config) -> str:
    return config["data"]["dataset"]


def _per_token(config: Config) -> bool:
    return config["task"]["name"] in _PER_TOKEN_TASKS


UNUSED_WHEN_DEFAULT: tuple[tuple[str, Callable[[Config], bool]], ...] = (
    # (dotted key, the config cannot read it): dropped only while the key holds its default
    ("model.hidden_sizes", lambda c: _model(c) != "mlp"),
    ("model.channels", lambda c: _model(c) != "cnn"),
    ("model.d_model", lambda c: _model(c) not in ("lm", "lstm_lm")),
    ("model.num_layers", lambda c: _model(c) not in ("lm", "lstm_lm")),
    ("model.num_heads", lambda c: _model(c) != "lm"),
    ("model.dropout", lambda c: _model(c) not in BUILTIN_MODELS),  # a user model takes its own kwargs
    ("model.kwargs", lambda c: _model(c) in BUILTIN_MODELS),
    ("model.input_dtype", lambda c: _model(c) in BUILTIN_MODELS),
    ("data.synthetic", lambda c: _dataset(c) != "synthetic"),
    ("data.augment", lambda c: True),  # its defaults are "off"
    ("data.transform", lambda c: True),  # unset: no transform
    ("data.inputs", lambda c: True),  # unset: no named inputs beyond the token data's
    ("data.path", lambda c: _dataset(c) not in ("parquet", "image_folder")),
    ("data.val_path", lambda c: _dataset(c) not in ("parquet", "image_folder")),
    ("data.image_shape", lambda c: _dataset(c) not in ("parquet", "image_folder")),
    ("data.feature_column", lambda c: _dataset(c) != "parquet"),
    ("data.label_column", lambda c: _dataset(c) != "parquet"),
    ("data.num_classes", lambda c: _dataset(c) != "parquet"),
    ("data.seq_len", lambda c: not _per_token(c)),
    ("data.truncate", lambda c: not _per_token(c)),
    ("data.pad_token_id", lambda c: not _per_token(c)),
    ("data.vocab_size", lambda c: not _per_token(c)),
    ("task.ignore_index", lambda c: not _per_token(c)),
    ("optimizer.momentum", lambda c: c["optimizer"]["name"] != "sgd"),
    ("optimizer.nesterov", lambda c: c["optimizer"]["name"] != "sgd"),
    ("optimizer.schedule.step_size", lambda c: c["optimizer"]["schedule"]["name"] != "step"),
    ("optimizer.schedule.gamma", lambda c: c["optimizer"]["schedule"]["name"] != "step"),
    ("optimizer.schedule.min_lr_factor", lambda c: c["optimizer"]["schedule"]["name"] not in ("cosine", "linear")),
    *((f"precision.{key}", lambda c: c["precision"]["policy"] not in _LOSS_SCALED)
      for key in ("loss_scale", "init_scale", "growth_factor", "backoff_factor", "growth_interval")),
    # a stage's switches that are off
    *((key, lambda c: True) for key in ("init_from", "tune", "early_stop", "eval_every_steps",
                                        "checkpoint_every_steps", "log_every_steps", "techniques", "compile",
                                        "activation_checkpointing")),
    ("epochs", lambda c: c["kind"] == "dsd"),  # its phases set them
    # a DSD round's own epochs and factor: unset, the dsd block's hold
    *((f"dsd.rounds.*.{key}", lambda c: True) for key in ("sparse_epochs", "redense_epochs", "redense_lr_factor")),
)


def _defaults() -> Config:
    sections = {"model": ModelConfig(), "data": DataConfig(), "task": TaskConfig(), "optimizer": OptimizerConfig(),
                "precision": PrecisionConfig()}
    return {**{name: section.model_dump(mode="json") for name, section in sections.items()},
            "init_from": None, "tune": None, "early_stop": None, "eval_every_steps": None,
            "checkpoint_every_steps": None, "log_every_steps": StageConfig.model_fields["log_every_steps"].default,
            "techniques": [], "epochs": None, "compile": None, "activation_checkpointing": None,
            "dsd": {"rounds": {"*": DsdRound(sparsity=0.5).model_dump(mode="json")}}}


def prune_unused(config: Config) -> Config:
    """A copy of a stage's (or the globals') resolved config without the keys of
    :data:`UNUSED_WHEN_DEFAULT` that hold their default where the config cannot read them
    (``*`` in a key: every item of a list); a distillation teacher's model is pruned alike."""
    defaults, pruned = _defaults(), copy.deepcopy(config)
    for key, unused in UNUSED_WHEN_DEFAULT:
        if _applies(unused, config):
            _drop_defaults(pruned, defaults, key.split("."))
    for block in [pruned.get("distill"), *(pruned.get("techniques") or [])]:
        for teacher in (block.get("teachers") or []) if isinstance(block, dict) else []:
            if isinstance(teacher, dict) and isinstance(teacher.get("model"), dict):
                teacher["model"] = prune_unused({"model": teacher["model"]})["model"]
    return pruned


def _drop_defaults(section: Any, default: Any, path: list[str]) -> None:
    """Delete ``path`` from ``section`` (``*``: each list item) where it equals ``default``'s."""
    head, *rest = path
    if head == "*":
        for item in section if isinstance(section, list) else []:
            _drop_defaults(item, default["*"], rest)
    elif not isinstance(section, dict) or head not in section:
        return
    elif rest:
        _drop_defaults(section[head], default[head], rest)
    elif section[head] == default[head]:
        del section[head]


def _applies(unused: Callable[[Config], bool], config: Config) -> bool:
    try:
        return unused(config)
    except (KeyError, TypeError):  # a section this summary lacks: keep the key
        return False


def changes(config: Config, base: Config) -> Config:
    """What ``config`` sets beyond ``base``: keys ``base`` lacks, and values that differ
    (mappings compared key by key)."""
    result = {}
    for key, value in config.items():
        if key not in base:
            result[key] = value
        elif isinstance(value, dict) and isinstance(base[key], dict):
            inner = changes(value, base[key])
            if inner:
                result[key] = inner
        elif value != base[key]:
            result[key] = value
    return result


def recipe_view(recipe: Config) -> Config:
    """The recipe to show: the globals pruned, then each stage's name, kind and what it
    sets or changes against the (pruned) globals."""
    stages = [stage for stage in recipe.get("stages") or [] if isinstance(stage, dict)]
    globals_ = prune_unused({key: value for key, value in recipe.items() if key != "stages"})
    shown = []
    for stage in stages:
        own = changes(prune_unused(stage), globals_)
        shown.append({"name": stage.get("name"), "kind": stage.get("kind"),
                      **{key: value for key, value in own.items() if key not in ("name", "kind")}})
    return {**globals_, "stages": shown} if stages else globals_
