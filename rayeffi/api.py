"""The Python API: a recipe (a path, a dict or a :class:`~rayeffi.recipe.Recipe`) and,
optionally, a model object in; a :class:`~rayeffi.result.Result` out.

The same driver as ``rayeffi run`` (``run.run_recipe``) behind a function: every check,
the same one-line :class:`~rayeffi.errors.UserError` for a user's mistake, the same run
directory. See docs/api.md.
"""

from __future__ import annotations

import json
import shutil
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from torch import nn

from rayeffi.errors import UserError
from rayeffi.health import HealthStop, check_final
from rayeffi.models import check_builder
from rayeffi.recipe import Recipe, load_recipe
from rayeffi.result import Result
from rayeffi.driver.run import run_recipe
from rayeffi.driver.plan import validate_run
from rayeffi.driver.run_dir import claim_run_dir
from rayeffi.stages.local_run import needs_ray

RecipeLike = str | Path | dict[str, Any] | Recipe


def run(recipe: RecipeLike, *, out: str | Path, model: Callable[..., nn.Module] | None = None,
        datasets: Mapping[str, Any] | None = None, smoke: bool = False, overrides: list[str] = (),
        address: str | None = None, resume: bool = False, overwrite: bool = False) -> Result:
    """Run every stage of ``recipe`` into the run directory ``out``; return its :class:`Result`.

    ``model``: a function ``(num_features, num_classes, image_shape, **model.kwargs) -> nn.Module``
    or an ``nn.Module`` subclass, called that way; it builds the model of every stage,
    in place of ``model.name`` (which becomes its qualified name in ``summary.json``).
    ``datasets``: Ray Datasets you already have, ``{"train": ds}`` or ``{"train": ds, "val": ds}``,
    in place of ``data``'s files: each is written once as Parquet to ``out/data/NAME`` and
    the recipe reads it as ``data: {dataset: parquet, path: ...}``, so every check of a
    Parquet set applies (``data.feature_column`` / ``label_column`` name your columns).
    ``overrides``: ``--set`` strings (``"stages.train.epochs=3"``); ``smoke``: the CI-sized run.
    ``resume`` continues the run in ``out``; ``overwrite`` replaces it (an ``out`` holding a run
    is refused without one of them).

    Raises :class:`UserError` (one line) for a bad recipe or model object, a failed check,
    a stage whose loss became non-finite or ended non-finite; other exceptions (a worker's
    crash, Ray's ``TrainingFailedError``) propagate as ``run_recipe`` raises them.
    """
    builder = check_builder(model)
    out = Path(out).absolute()
    if not overwrite:  # before the datasets are written: an earlier run's directory is not touched
        claim_run_dir(out, resume=resume, overwrite=False)
    overrides = [*overrides, *_datasets_as_parquet(datasets, out)] if datasets is not None else overrides
    loaded = load_recipe(recipe, overrides, smoke=smoke, builder=builder)
    if builder is not None and any(needs_ray(stage) for stage in loaded.stages):  # in process: it stays here
        _send_by_value(builder)
    try:
        summary = run_recipe(loaded, out, address=address, resume=resume, overwrite=overwrite)
    except KeyboardInterrupt:
        diverged = HealthStop.take()  # the driver's health check stops a diverging run this way
        if diverged:
            raise UserError(diverged) from None
        raise
    for stage in summary["stages"]:
        diverged = check_final(stage.get("metrics") or {})
        if diverged:
            raise UserError(f"stages.{stage['name']}: {diverged}")
    return Result(out, summary, builder)


def validate(recipe: RecipeLike, address: str | None = None, *, model: Callable[..., nn.Module] | None = None,
             smoke: bool = False, overrides: list[str] = ()) -> list[str]:
    """Every check :func:`run` makes before training, without training; returns the plan's lines.

    Raises :class:`UserError` where ``run`` would (GPUs asked for and not there included).
    """
    return validate_run(load_recipe(recipe, overrides, smoke=smoke, builder=check_builder(model)), address)


def _datasets_as_parquet(datasets: Mapping[str, Any], out: Path) -> list[str]:
    """Write the user's Ray Datasets to ``out/data/{train,val}`` (Parquet); the ``--set``
    overrides that point the recipe's ``data`` at them."""
    import ray.data

    if not isinstance(datasets, Mapping) or "train" not in datasets:
        raise UserError("datasets: give a mapping with a 'train' Ray Dataset (and optionally 'val'), "
                        f"got {type(datasets).__name__}")
    unknown = sorted(set(datasets) - {"train", "val"})
    if unknown:
        raise UserError(f"datasets: unknown split(s) {unknown}: the splits are 'train' and 'val'")
    overrides = ["data.dataset=parquet"]
    for name, dataset in datasets.items():
        if not isinstance(dataset, ray.data.Dataset):
            raise UserError(f"datasets[{name!r}]: a ray.data.Dataset is needed, got {type(dataset).__name__}")
        path = out / "data" / name
        shutil.rmtree(path, ignore_errors=True)  # a rerun into the same out replaces its copy
        dataset.write_parquet(str(path))
        overrides.append(f"data.{'path' if name == 'train' else 'val_path'}={json.dumps(str(path))}")
    return overrides


def _send_by_value(builder: Callable[..., nn.Module]) -> None:
    """Let the builder reach Ray's workers although they cannot import its module.

    The stage config (holding the builder) is pickled to every worker. A function from
    ``__main__`` travels by value anyway; one from a script, notebook helper or test module
    would travel by reference and fail to import there, so its module travels by value
    too. Installed packages (site-packages) and rayeffi itself stay by reference.
    """
    from ray import cloudpickle

    module = sys.modules.get(builder.__module__)
    if module is None or module.__name__ == "__main__" or module.__name__.split(".")[0] == "rayeffi":
        return
    installed = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    location = Path(getattr(module, "__file__", None) or "").resolve()
    if getattr(module, "__file__", None) is None or any(location.is_relative_to(root) for root in installed):
        return
    cloudpickle.register_pickle_by_value(module)


__all__ = ["run", "validate"]
