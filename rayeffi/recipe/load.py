"""Reading a recipe: YAML (or a dict, or a Recipe) -> ``--set`` overrides -> validation -> ``--smoke``.

Every way this can go wrong raises :class:`~rayeffi.errors.UserError` with one line
that names the file or key and the fix.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rayeffi.errors import UserError
from rayeffi.recipe.checks import check_recipe, reject_non_finite
from rayeffi.recipe.models import GLOBAL_SECTIONS, STAGE_CONFIGS, STAGE_KINDS, Recipe, StageConfig, unmerged
from rayeffi.recipe.parallel import PARALLEL_CONFIGS
from rayeffi.recipe.paths import find_path, recipe_folders, resolve_stage_paths
from rayeffi.recipe.techniques import TECHNIQUE_CONFIGS

SMOKE_MAX_EPOCHS = 2
SMOKE_MAX_SAMPLES = 512
SMOKE_MAX_VAL_SAMPLES = 512
SMOKE_MAX_TRIALS = 2
SMOKE_MAX_WORKERS = 2


def load_recipe(recipe: str | Path | dict[str, Any] | Recipe, overrides: list[str] = (), smoke: bool = False, *,
                builder: Any = None) -> Recipe:
    """Read ``recipe``, apply ``--set`` overrides, validate, and optionally shrink it.

    ``recipe``: the path of a YAML file, a dict of the same structure, or a :class:`Recipe`
    (checked again, with the overrides applied). All three go through the same checks and
    fail with the same one-line :class:`UserError`; a file's errors name the file, a dict's
    and a Recipe's name the key. ``builder``: a model builder object for every stage
    (``model.builder``, see :class:`~rayeffi.recipe.sections.ModelConfig`).
    """
    source, raw = _raw_recipe(recipe)
    folders = recipe.folders if isinstance(recipe, Recipe) else recipe_folders(
        recipe if isinstance(recipe, (str, Path)) else None)
    for override in overrides:
        key, value = parse_override(override)
        set_dotted(raw, key, value)
    if builder is not None:
        set_dotted(raw, "model.builder", builder)  # merged under every stage, and their teachers
    try:
        reject_non_finite(raw)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    recipe = validate_recipe(raw, source=source)
    check_recipe(recipe)
    recipe = resolve_paths(recipe, folders)
    return smoke_recipe(recipe) if smoke else recipe


def resolve_paths(recipe: Recipe, folders: tuple[str, ...]) -> Recipe:
    """``recipe`` with every stage's relative file paths found in ``folders`` (``recipe/paths.py``),
    remembering ``folders`` for the import path. The global ``data`` paths follow where found,
    so :func:`unmerged` still sees a stage's data as the globals'."""
    names = {stage.name for stage in recipe.stages}
    stages = tuple(resolve_stage_paths(stage, folders, names) for stage in recipe.stages)
    data_update = {}
    for key in ("path", "val_path", "test_path"):
        value = getattr(recipe.data, key)
        with contextlib.suppress(UserError):  # only the stages' copies are read: they say what is missing
            data_update[key] = value and find_path(value, folders, f"data.{key}")
    resolved = recipe.model_copy(update={"stages": stages, "data": recipe.data.model_copy(update=data_update)})
    resolved._folders = folders
    return resolved


def _raw_recipe(recipe: str | Path | dict[str, Any] | Recipe) -> tuple[str, dict[str, Any]]:
    """``(how errors name it, a raw recipe dict of this caller's own)``."""
    if isinstance(recipe, (str, Path)):
        return str(recipe), read_yaml(Path(recipe))
    if isinstance(recipe, Recipe):
        return "recipe", unmerged(recipe)
    if isinstance(recipe, dict):
        return "recipe", copy.deepcopy(recipe)  # overrides never change the caller's dict
    raise UserError(f"recipe: got {type(recipe).__name__}, not a recipe: give the path of a YAML file, a dict of the "
                    "same structure, or a rayeffi.Recipe")


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that rejects a key given twice in one mapping.

    Plain YAML loading keeps the last value, so ``epochs:`` written twice in a stage
    silently trains for the second count. Merge keys (``<<: *defaults``, or a list of
    mappings) are YAML 1.1's: a key written in the mapping overrides a merged one, and
    among merged mappings the earlier wins; only keys written twice are refused.
    """

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:  # merged keys may be overridden: flatten_mapping resolves them
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise UserError(f"key '{key}' appears twice in one mapping (lines {seen[key]} and {line}): "
                                "keep one of them")
            seen[key] = line
        self.flatten_mapping(node)  # before the base class builds the dict: the merge key has no constructor
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """Parse YAML like ``yaml.safe_load``, but a duplicate key is a :class:`UserError`."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise UserError(f"recipe {path} is a folder: give the path of a YAML recipe file in it (see examples/)")
    if not path.is_file():
        raise UserError(f"recipe {path} does not exist: give the path of a YAML recipe (see examples/)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise UserError(f"recipe {path}: line {line}: byte 0x{exc.object[exc.start]:02x} is not UTF-8: save the "
                        "recipe as UTF-8") from None
    except OSError as exc:
        raise UserError(f"recipe {path} cannot be read ({exc.strerror or exc}): check its permissions") from None
    try:
        raw = safe_load_unique(text)
    except UserError as exc:
        raise UserError(f"recipe {path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"recipe {path}:{where}: {problem}: fix the YAML syntax") from None
    if raw is None:
        raise UserError(f"recipe {path} is empty: it needs at least a 'stages' list (see examples/quickstart.yaml)")
    if not isinstance(raw, dict):
        raise UserError(f"recipe {path} must be a mapping of sections, not a {type(raw).__name__}")
    return raw


def parse_override(text: str) -> tuple[str, Any]:
    """``dotted.key=value`` with the value parsed as YAML (``[0.5, 0.25]`` is a list)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {text!r}: write --set dotted.key=value, e.g. --set optimizer.lr=0.05")
    try:
        return key, safe_load_unique(value) if value.strip() else None
    except UserError as exc:
        raise UserError(f"--set {key}: {exc}") from None
    except yaml.YAMLError:
        raise UserError(f"--set {key}: value {value!r} is not valid YAML: quote it or fix the brackets") from None


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` in the raw recipe. ``stages.NAME.x`` (or ``stages.0.x``) reaches a stage."""
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, (list, tuple)):  # stages, or a stage's techniques: by name or by position
            node = _item_by_name_or_index(node, part, key, parts[depth - 1] if depth else "")
            continue
        if not isinstance(node, dict):
            where = ".".join(parts[:depth])
            raise UserError(f"--set {key}: {where} is a value, not a section; set {where}=... instead")
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        node = child
    if isinstance(node, (list, tuple)):
        raise UserError(f"--set {key}: address a stage key, e.g. stages.NAME.epochs=3")
    if not isinstance(node, dict):
        where = ".".join(parts[:-1])
        raise UserError(f"--set {key}: {where} is a value, not a section; set {where}=... instead")
    node[parts[-1]] = value


def _item_by_name_or_index(items: list[Any], part: str, key: str, list_key: str) -> Any:
    names = [item.get("name") for item in items if isinstance(item, dict)]
    for item in items:
        if isinstance(item, dict) and item.get("name") == part:
            return item
    if part.isdigit() and int(part) < len(items):
        return items[int(part)]
    what = "stage" if list_key == "stages" else f"{list_key} item"
    raise UserError(f"--set {key}: no {what} named {part!r}; {list_key} are: {', '.join(map(str, names)) or 'none'}")


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{source}: {describe_error(exc.errors()[0], raw)}") from None


def describe_error(error: dict[str, Any], raw: dict[str, Any]) -> str:
    """One pydantic error as ``key: what is wrong; how to fix it``."""
    loc = list(error["loc"])
    key = _dotted_location(loc, raw)
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key '{key}': {_unknown_key_hint(str(loc[-1]), key, _allowed_keys(loc[:-1]))}"
    if kind == "missing":
        return f"'{key}' is required: add it to the recipe"
    if kind in ("union_tag_invalid", "union_tag_not_found") and len(loc) > 1 and loc[-2] == "techniques":
        return f"'{key}.name' must be one of: {', '.join(TECHNIQUE_CONFIGS)}"
    if kind == "union_tag_invalid" and loc[-1] == "parallel":
        return f"'{key}.strategy' must be one of: {', '.join(PARALLEL_CONFIGS)}"
    if kind == "union_tag_invalid":
        return f"'{key}.kind' must be one of: {', '.join(STAGE_KINDS)}"
    if kind == "union_tag_not_found":
        return f"'{key}' needs a 'kind' (e.g. kind: train)"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "value_error":  # our own validators already name the keys and the fix
        return f"{key}: {message}" if key else message
    if "input" in error and kind != "model_type":
        message = f"{message} (got {error['input']!r})"
    if key:
        return f"'{key}': {message}; fix it in the recipe or with --set {key}=..."
    return message


def _unknown_key_hint(name: str, key: str, allowed: list[str]) -> str:
    """The fix for a key no section has: the closest allowed key where one is close (``epoch``
    -> ``epochs``); under ``model``, a keyword for the builder goes in ``model.kwargs``."""
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.75)
    if close:
        return f"did you mean '{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}'?"
    if "kwargs" in allowed and "builder" in allowed:  # the model section
        prefix = key.rsplit(".", 1)[0]
        return (f"keyword arguments of your model's builder go under {prefix}.kwargs "
                f"(e.g. --set {prefix}.kwargs.{name}=...); the built-in models' keys are: "
                f"{', '.join(k for k in allowed if k not in ('builder', 'kwargs'))}")
    return f"check its spelling; allowed here: {', '.join(allowed)}" if allowed else "check its spelling"


def _dotted_location(loc: list[Any], raw: dict[str, Any]) -> str:
    """``('stages', 0, 'train', 'optimizer', 'lr')`` -> ``stages.NAME.optimizer.lr``."""
    parts: list[str] = []
    index = 0
    while index < len(loc):
        part = loc[index]
        if part == "stages" and index + 1 < len(loc) and isinstance(loc[index + 1], int):
            position = loc[index + 1]
            stage = raw.get("stages", [])[position] if position < len(raw.get("stages", [])) else {}
            name = stage.get("name") if isinstance(stage, dict) else None
            parts += ["stages", str(name or position)]
            index += 2
            # the tagged union puts the stage kind in the location: skip it
            if index < len(loc) and isinstance(stage, dict) and loc[index] == stage.get("kind"):
                index += 1
            continue
        parts.append(str(part))
        index += 1
        # the parallel union puts the strategy in the location: skip it too
        if part == "parallel" and index < len(loc) and loc[index] in PARALLEL_CONFIGS:
            index += 1
        # and the techniques union its item's name, after the position
        if part == "techniques" and index + 1 < len(loc) and isinstance(loc[index], int) \
                and loc[index + 1] in TECHNIQUE_CONFIGS:
            parts.append(str(loc[index]))
            index += 2
    return ".".join(parts)


def _allowed_keys(loc: list[Any]) -> list[str]:
    """The field names of the model found at ``loc`` (walked from :class:`Recipe`)."""
    model: type[BaseModel] | None = Recipe
    index = 0
    while index < len(loc) and model is not None:
        part = loc[index]
        if part == "stages" and index + 2 < len(loc) and isinstance(loc[index + 1], int):
            model = STAGE_CONFIGS.get(loc[index + 2])  # the tagged union's tag: the stage kind
            index += 3
            continue
        if part == "parallel" and index + 1 < len(loc) and loc[index + 1] in PARALLEL_CONFIGS:
            model = PARALLEL_CONFIGS[loc[index + 1]]  # the parallel union's tag: the strategy
            index += 2
            continue
        if part == "techniques" and index + 2 < len(loc) and loc[index + 2] in TECHNIQUE_CONFIGS:
            model = TECHNIQUE_CONFIGS[loc[index + 2]]  # position, then the union's tag: the name
            index += 3
            continue
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        index += 1
    return sorted(model.model_fields) if model else []


def smoke_recipe(recipe: Recipe) -> Recipe:
    """Shrink a recipe to a CI-sized run: few epochs, few samples, few trials, <= 2 workers."""
    return recipe.model_copy(update={"stages": tuple(_smoke_stage(s) for s in recipe.stages)})


def _smoke_stage(stage: StageConfig) -> StageConfig:
    raw = stage.smoke_raw(stage.model_dump(), SMOKE_MAX_EPOCHS)
    raw["data"]["max_samples"] = min(stage.data.max_samples or SMOKE_MAX_SAMPLES, SMOKE_MAX_SAMPLES)
    raw["data"]["max_val_samples"] = min(stage.data.max_val_samples or SMOKE_MAX_VAL_SAMPLES, SMOKE_MAX_VAL_SAMPLES)
    raw["data"]["synthetic"]["num_samples"] = min(stage.data.synthetic.num_samples, SMOKE_MAX_SAMPLES)
    raw["scaling"]["num_workers"] = stage.parallel.smoke_num_workers(stage.scaling.num_workers, SMOKE_MAX_WORKERS)
    if stage.tune is not None:
        raw["tune"]["num_samples"] = min(stage.tune.num_samples, SMOKE_MAX_TRIALS)
        for key in raw["tune"]["search_space"]:
            if key.rsplit(".", 1)[-1].endswith("epochs"):  # searched epoch counts shrink too
                raw["tune"]["search_space"][key] = {"choice": [1]}
    smoked = type(stage).model_validate(raw)
    warmup_steps = smoked.optimizer.schedule.warmup_steps
    if warmup_steps is not None and warmup_steps >= smoked.total_epochs:
        # every epoch makes a step at least: a warm-up shorter than the epochs is shorter than the run
        raw["optimizer"]["schedule"]["warmup_steps"] = smoked.total_epochs - 1
        smoked = type(stage).model_validate(raw)
    return smoked


__all__ = ["GLOBAL_SECTIONS", "load_recipe", "parse_override", "resolve_paths", "set_dotted", "smoke_recipe",
           "validate_recipe"]
