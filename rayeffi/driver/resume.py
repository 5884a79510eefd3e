"""``rayeffi run RECIPE --out DIR --resume``: continue a run whose driver died.

What survives a dead driver is on disk: ``DIR/summary.json`` (a stage's entry is
written only once the stage is complete), ``DIR/progress.jsonl`` (every epoch line as
it arrived) and the Ray Train checkpoints under the storage (``DIR/ray`` or
``--storage``), one per epoch, the last two kept. The plan, made before Ray starts:

- the recipe must be the one the run was started with (the summary holds it);
- the leading stages whose entries are complete and whose artifacts open as
  checkpoints are skipped, their artifacts handed on as if they had just run (an
  artifact cut short or overwritten since makes its stage run again);
- the first other stage continues from its newest readable checkpoint (model,
  optimizer, scheduler, RNG, techniques; a file cut short by the crash is passed
  over; newest by epoch, then by the step within it of a ``checkpoint_every_steps``
  checkpoint), its history up to that checkpoint's completed epochs and its
  validations within epochs up to its global step taken from ``progress.jsonl``, so a
  continued epoch is reported once (a local-mode stage keeps its checkpoints there too:
  ``stages/local_run.py``). A Tune stage or a stage with no checkpoint yet starts
  again from its beginning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rayeffi.errors import UserError
from rayeffi.recipe.models import Recipe, StageConfig
from rayeffi.driver.storage import load_state, read_state_bytes, resolve_storage, stage_checkpoints

SUMMARY_FILE = "summary.json"
PROGRESS_FILE = "progress.jsonl"
RESUME_CHECKPOINT = "resume.pt"


@dataclass
class ResumePlan:
    storage: str
    completed: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Summary entries of the stages to skip, by name."""
    checkpoints: dict[str, str] = field(default_factory=dict)
    """The interrupted stage -> a local copy of the checkpoint it continues from."""
    histories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """The interrupted stage -> its epoch metrics up to that checkpoint."""
    evals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """The interrupted stage -> its validations within epochs up to that checkpoint's step."""
    resumes: list[dict[str, Any]] = field(default_factory=list)
    """Every resume of this run directory so far, this one last (for ``summary.json``)."""


def plan_resume(recipe: Recipe, out_dir: Path, storage: str | None = None) -> ResumePlan:
    summary = read_summary(out_dir)
    check_same_recipe(recipe.model_dump(mode="json"), summary.get("recipe", {}), out_dir)
    storage = resolve_storage(storage, out_dir) if storage else summary.get("storage") or str(out_dir / "ray")
    plan = ResumePlan(storage=storage)
    unreadable = None
    for stage, entry in zip(recipe.stages, summary.get("stages", [])):
        if entry.get("name") != stage.name or not Path(entry.get("checkpoint", "")).is_file():
            break
        unreadable = artifact_problem(entry["checkpoint"])
        if unreadable:  # cut short or overwritten since: run the stage again rather than hand it on
            break
        plan.completed[stage.name] = entry
    record: dict[str, Any] = {"skipped": list(plan.completed), "stage": None, "from_epoch": 0, "from_step": 0}
    if unreadable:
        record["unreadable_artifact"] = unreadable
    remaining = [stage for stage in recipe.stages if stage.name not in plan.completed]
    if remaining:
        stage = remaining[0]
        record["stage"] = stage.name
        found = None if stage.tune is not None else last_checkpoint(storage, stage)
        if found is not None:
            data, epoch, step, global_step, carried = found
            local = out_dir / "stages" / stage.name / RESUME_CHECKPOINT
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            plan.checkpoints[stage.name] = str(local)
            plan.histories[stage.name] = recovered_history(out_dir / PROGRESS_FILE, stage.name, epoch, carried)
            plan.evals[stage.name] = logged_evals(out_dir / PROGRESS_FILE, stage.name, global_step)
            record["from_epoch"], record["from_step"] = epoch, step
    plan.resumes = [*summary.get("resumes", []), record]
    return plan


def artifact_problem(path: str) -> str | None:
    """Why a completed stage's artifact cannot be handed on (None: it opens as a checkpoint)."""
    from rayeffi.checkpoint import load_checkpoint

    try:
        load_checkpoint(path)
    except UserError as exc:
        return str(exc)
    return None


def read_summary(out_dir: Path) -> dict[str, Any]:
    path = out_dir / SUMMARY_FILE
    if not path.is_file():
        raise UserError(f"--resume: {path} does not exist, so there is no run to continue: drop --resume "
                        "to start one, or give the --out of an earlier run")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"--resume: {path} is not valid JSON ({exc}): start a new run with another --out") from None


def check_same_recipe(now: dict[str, Any], then: dict[str, Any], out_dir: Path) -> None:
    """A resumed run must be the same run: name the first key that differs."""
    now = json.loads(json.dumps(now))  # tuples -> lists, as the summary stores them
    difference = first_difference(then, now)
    if difference is not None:
        key, old, new = difference
        raise UserError(
            f"--resume: {key} is {new!r} now but was {old!r} when {out_dir} was run: resume with the same "
            "recipe, --set and --smoke, or start a new run with another --out"
        )


def first_difference(a: Any, b: Any, key: str = "recipe") -> tuple[str, Any, Any] | None:
    """``(dotted key, a's value, b's value)`` of the first place two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for name in list(a) + [k for k in b if k not in a]:
            found = first_difference(a.get(name), b.get(name), f"{key}.{name}" if key != "recipe" else name)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b)):
            label = x.get("name", index) if key == "stages" and isinstance(x, dict) else index
            found = first_difference(x, y, f"{key}.{label}")
            if found:
                return found
        return None
    return None if a == b else (key, a, b)


def last_checkpoint(storage: str, stage: StageConfig) -> tuple[bytes, int, int, int, list[dict]] | None:
    """The newest readable checkpoint of ``stage`` that leaves steps to run: ``(bytes, epoch,
    step, global_step, history)``: ``epoch`` completed epochs and ``step`` steps of the next
    (``checkpoint.py: checkpoint_position``; a checkpoint without them: 0, and its global
    step is unknown, -1, so no validation within an epoch is read back), and the metrics of
    every completed epoch it carries (older checkpoints: none).

    A checkpoint of the final epoch is passed over for the one before it: the driver
    died before publishing it, and re-running one epoch is what makes the stage report.
    """
    from rayeffi.checkpoint import checkpoint_position  # torch: only once a checkpoint is read

    best: tuple[bytes, int, int, int, list[dict]] | None = None
    for directory in stage_checkpoints(storage, stage.name):
        data = read_state_bytes(storage, directory)
        state = load_state(data) if data is not None else None
        if state is None:
            continue
        epoch, step = checkpoint_position(state)
        if epoch < stage.total_epochs and (best is None or (epoch, step) > best[1:3]):
            best = (data, epoch, step, int(state.get("global_step", -1)), list(state.get("history") or []))
    return best


def logged_evals(progress_file: Path, stage_name: str, up_to_step: int) -> list[dict[str, Any]]:
    """The stage's validations within epochs (``eval`` events) at global steps ``<= up_to_step``."""
    evals = {int(message["step"]): {k: v for k, v in message.items() if k not in ("stage", "event")}
             for message in _logged(progress_file, stage_name)
             if message.get("event") == "eval" and message["step"] <= up_to_step}
    return [evals[step] for step in sorted(evals)]


def logged_history(progress_file: Path, stage_name: str, up_to_epoch: int) -> list[dict[str, Any]]:
    """The stage's epochs ``1..up_to_epoch`` from the epoch log, the last line of each winning."""
    epochs = {int(message["epoch"]): {k: v for k, v in message.items() if k != "stage"}
              for message in _logged(progress_file, stage_name)
              if "event" not in message and int(message["epoch"]) <= up_to_epoch}
    return [epochs[epoch] for epoch in sorted(epochs)]


def recovered_history(progress_file: Path, stage_name: str, up_to_epoch: int,
                      carried: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Epochs ``1..up_to_epoch``: the epoch log's, and those the checkpoint carries that the log
    lacks (its driver died before writing them); the recovered ones are appended to the log, so
    both ``progress.jsonl`` and ``summary.json`` hold every epoch."""
    logged = {int(row["epoch"]): row for row in logged_history(progress_file, stage_name, up_to_epoch)}
    missing = [row for row in carried if int(row["epoch"]) <= up_to_epoch and int(row["epoch"]) not in logged]
    if missing:
        cut_short = progress_file.is_file() and not progress_file.read_bytes().endswith(b"\n")
        with progress_file.open("a") as log:
            if cut_short:  # the line the dying driver was writing: end it, or the next line joins it
                log.write("\n")
            for row in missing:
                log.write(json.dumps({"stage": stage_name, **row}) + "\n")
    rows = {**{int(row["epoch"]): dict(row) for row in missing}, **logged}
    return [rows[epoch] for epoch in sorted(rows)]


def _logged(progress_file: Path, stage_name: str) -> Iterator[dict[str, Any]]:
    """The stage's lines of the epoch log, oldest first (a later line for the same epoch or step wins)."""
    if not progress_file.is_file():
        return
    for line in progress_file.read_text().splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:  # the line being written when the driver died
            continue
        if message.get("stage") == stage_name:
            yield message
