"""The recipe's folders: where its relative paths and its ``module:function`` imports are found.

A recipe read from a file looks in its own folder first, then in the current folder; a
recipe given from Python (a dict or a :class:`Recipe`) in the current folder. Relative
file paths (``data.path``, ``data.val_path``, ``init_from``, distillation teachers'
``checkpoint``) become absolute here, once, so the driver, every worker and every Tune
trial read the same file whatever their working directory; the same folders go on the
import path of the driver (:func:`use_import_paths`) and of every Ray worker
(``stages/ray_session.py``), so a model, loss, metric, optimizer or transform module
beside the recipe imports without ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from rayeffi.errors import UserError


def recipe_folders(recipe_file: str | Path | None) -> tuple[str, ...]:
    """The recipe's folder (absolute) then the current one; only the current one without a file."""
    here = str(Path.cwd())
    if recipe_file is None:
        return (here,)
    folder = str(Path(recipe_file).absolute().parent)
    return (folder,) if folder == here else (folder, here)


def find_path(text: str, folders: tuple[str, ...], key: str) -> str:
    """``text`` as an absolute path: as given if absolute (or a URI), else the first of
    ``folders`` that holds it. ``UserError`` naming ``key`` and every path tried otherwise."""
    if "://" in text or Path(text).expanduser().is_absolute():
        return text
    tried = [Path(folder, text) for folder in folders]
    for path in tried:
        if path.exists():
            return str(path)
    where = " or ".join(str(path) for path in tried)
    raise UserError(f"{key}: {text} is not there (tried {where}): give a path relative to the recipe's folder "
                    "or the current folder, or an absolute one")


def resolve_stage_paths(stage: Any, folders: tuple[str, ...], stage_names: set[str]) -> Any:
    """``stage`` with its relative file paths made absolute (see the module docstring)."""
    key = f"stages.{stage.name}"
    data = stage.data
    update: dict[str, Any] = {}
    data_update = {name: find_path(getattr(data, name), folders, f"{key}.data.{name}")
                   for name in ("path", "val_path", "test_path") if getattr(data, name) is not None}
    if data_update:
        update["data"] = data.model_copy(update=data_update)
    init_from = _resolved_init_from(stage.init_from, folders, f"{key}.init_from", stage_names)
    if init_from is not stage.init_from:
        update["init_from"] = init_from
    stage = stage.model_copy(update=update) if update else stage
    configs = [_with_teacher_paths(config, folders, config_key) for config_key, config in stage.technique_keys()]
    if any(new is not old for new, old in zip(configs, stage.technique_configs)):
        stage = stage.with_technique_configs(configs)
    return stage


def _resolved_init_from(init_from: Any, folders: tuple[str, ...], key: str, stage_names: set[str]) -> Any:
    """A checkpoint path, given as a string or as the ``path`` of a long form; stage names stay."""
    if init_from is None or init_from == "previous" or init_from in stage_names:
        return init_from
    if isinstance(init_from, str):
        return find_path(init_from, folders, key)
    path = getattr(init_from, "path", None)
    if isinstance(path, str) and path != "previous" and path not in stage_names:
        return init_from.model_copy(update={"path": find_path(path, folders, key)})
    return init_from


def _with_teacher_paths(config: Any, folders: tuple[str, ...], key: str) -> Any:
    teachers = getattr(config, "teachers", None)
    if not teachers:
        return config
    resolved = tuple(
        teacher.model_copy(update={"checkpoint": find_path(teacher.checkpoint, folders,
                                                           f"{key}.teachers.{index}.checkpoint")})
        if teacher.stage is None and isinstance(teacher.checkpoint, str) else teacher
        for index, teacher in enumerate(teachers)
    )
    if all(new is old for new, old in zip(resolved, teachers)):
        return config
    return config.model_copy(update={"teachers": resolved})


def use_import_paths(folders: tuple[str, ...]) -> None:
    """Put ``folders`` at the front of this process's import path (the driver's; workers get
    them from Ray's runtime environment)."""
    for folder in reversed(folders):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)


def worker_python_path(folders: tuple[str, ...]) -> str:
    """``PYTHONPATH`` for Ray's workers: ``folders``, then, for those inside the current folder,
    the same folder relative to it (the form a ``rayeffi submit`` job's workers find on every
    node: their working directory is the job's unpacked working directory), then the
    ``PYTHONPATH`` each node's Ray already gives its workers (``${PYTHONPATH}``: Ray's runtime
    environment expands it on the node, so a cluster's own setting is kept, not replaced)."""
    here = Path.cwd()
    relative = [os.path.relpath(folder, here) for folder in folders
                if Path(folder) != here and Path(folder).is_relative_to(here)]
    return os.pathsep.join([*folders, *relative, "${PYTHONPATH}"])
