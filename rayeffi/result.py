"""A finished run read back: :class:`Result` (what ``rayeffi.run`` returns) and
:func:`load_model` (a stage's trained model, from a run directory alone).

A run directory holds ``summary.json`` (the resolved recipe, each stage's metrics, its
checkpoint path and the shape of its data) and each stage's ``checkpoint.pt``: enough
to rebuild the model and load its weights without the recipe file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from rayeffi.checkpoint import load_checkpoint
from rayeffi.data.info import DatasetInfo
from rayeffi.data.sources import resolve_source
from rayeffi.errors import UserError
from rayeffi.models import BUILTIN_MODELS, build_model, check_builder
from rayeffi.recipe import load_recipe
from rayeffi.recipe.models import StageConfig
from rayeffi.driver.run_dir import SUMMARY_FILE


@dataclass(frozen=True)
class Result:
    """A finished ``rayeffi.run``: its directory and ``summary.json``."""

    out_dir: Path
    summary: dict[str, Any]
    """``summary.json`` as a dict."""
    builder: Callable[..., nn.Module] | None = field(default=None, repr=False)
    """The ``model`` object the run was given (``load_model`` builds with it again)."""

    @property
    def status(self) -> str:
        """``complete`` (a run that stopped raised instead of returning)."""
        return self.summary["status"]

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        """Each stage's summary entry (metrics, checkpoint, history, ...) by stage name, in order."""
        return {entry["name"]: entry for entry in self.summary["stages"]}

    @property
    def metrics(self) -> dict[str, Any]:
        """The last stage's final metrics (``val_accuracy``, ``val_loss``, ...)."""
        return self.summary["stages"][-1]["metrics"]

    def checkpoint(self, stage: str | None = None) -> Path:
        """The path of ``stage``'s checkpoint file (default: the last stage's)."""
        return Path(stage_entry(self.summary, self.out_dir, stage)["checkpoint"])

    def load_model(self, stage: str | None = None) -> nn.Module:
        """``stage``'s trained model (default: the last stage's), in eval mode."""
        return load_model(self.out_dir, stage, model=self.builder)


def load_model(run_dir: str | Path, stage: str | None = None, *, model: Callable[..., nn.Module] | None = None
               ) -> nn.Module:
    """The trained model of ``stage`` (default: the last) in the run directory ``run_dir``, in eval mode.

    The model is rebuilt from ``summary.json`` (the stage's model config, the best trial's
    for a tuned stage, and the data's shape) and its checkpoint's weights are loaded into
    it. ``model``: the builder object given to ``rayeffi.run``, if one was (the summary
    holds only its name).
    """
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    entry = stage_entry(summary, run_dir, stage)
    builder = check_builder(model)
    try:
        config = stage_config(summary, entry, builder)
        network = build_model(config.model, stage_data_info(entry, config, run_dir))
    except UserError as exc:
        if builder is not None or _model_name(summary, entry["name"]) in BUILTIN_MODELS:
            raise
        raise UserError(f"{exc} (if the run was given a model object, pass it again: "
                        "load_model(run_dir, model=builder))") from None
    network.load_state_dict(load_checkpoint(entry["checkpoint"])["model"])
    return network.eval()


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        what = "does not exist" if not run_dir.exists() else f"has no {SUMMARY_FILE}"
        raise UserError(f"run directory {run_dir} {what}: give the --out directory of a rayeffi run")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}): is it a rayeffi summary?") from None


def stage_entry(summary: dict[str, Any], run_dir: Path, stage: str | None) -> dict[str, Any]:
    """``stage``'s entry in the summary (default: the last finished one); a UserError naming what exists."""
    entries = summary.get("stages") or []
    if not entries:
        raise UserError(f"run {run_dir} has no finished stage (status {summary.get('status')!r}): "
                        "nothing to load yet")
    if stage is None:
        return entries[-1]
    for entry in entries:
        if entry["name"] == stage:
            return entry
    planned = [s["name"] for s in summary.get("recipe", {}).get("stages", [])]
    why = " (it did not finish)" if stage in planned else ""
    raise UserError(f"run {run_dir} has no stage {stage!r}{why}: finished stages are "
                    f"{', '.join(entry['name'] for entry in entries)}")


def stage_config(summary: dict[str, Any], entry: dict[str, Any], builder: Any) -> StageConfig:
    config = load_recipe(summary["recipe"], builder=builder).stage(entry["name"])
    if entry.get("best_config"):  # a tuned stage: the best trial's sampled keys (model keys among them)
        from rayeffi.stages.tune import stage_variant  # Ray Tune: only for a tuned stage's entry

        config = stage_variant(config, entry["best_config"])
    return config


def _model_name(summary: dict[str, Any], stage: str) -> str | None:
    stages = summary.get("recipe", {}).get("stages", [])
    return next((s.get("model", {}).get("name") for s in stages if s.get("name") == stage), None)


def stage_data_info(entry: dict[str, Any], config: StageConfig, run_dir: Path) -> DatasetInfo:
    if "data_info" in entry:
        info = dict(entry["data_info"])
        info["image_shape"] = tuple(info["image_shape"]) if info["image_shape"] else None
        return DatasetInfo(**info)
    # a summary written before stages recorded their data's shape: resolve the data again
    return resolve_source(config.data, config.seed, run_dir / "data", config.task).info


__all__ = ["Result", "load_model", "read_summary", "stage_config", "stage_data_info", "stage_entry"]
