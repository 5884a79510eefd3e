"""What a stage runner gets from the driver and gives back.

Stages run on the driver and never touch tensors: a stage turns its config and the
previous stage's :class:`Artifact` into a Ray Train run (or a Tune experiment whose
trials are Train runs) and returns a new artifact. Only artifacts pass between stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayeffi.checkpoint import ARTIFACT_FILE, CHECKPOINT_FILE, load_checkpoint, save_atomic
from rayeffi.data.sources import DataSource
from rayeffi.stages.progress import Progress
from rayeffi.worker.loop import WorkerSpec


@dataclass(frozen=True)
class Artifact:
    """The output of a stage: a checkpoint file and the metrics that go with it."""

    checkpoint: str
    metrics: dict[str, Any]


@dataclass
class StageContext:
    """Driver-side resources a stage runner may use."""

    stage_dir: Path
    """``OUT/stages/NAME``: the stage's artifact lands here."""
    storage_path: Path | str
    """Ray Train's storage (per-epoch checkpoints): a path or a pyarrow URI; shared on a cluster."""
    source: DataSource
    previous: Artifact | None
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    """Artifacts of the stages run so far, by stage name (for ``init_from: NAME``)."""
    progress: Progress | None = None
    """Driver-side printer and history of epoch lines (not sent to trials)."""
    progress_queue: Any = None
    """The Ray queue behind ``progress``; workers put their epoch metrics on it."""
    resume_checkpoint: str | None = None
    """A checkpoint of this same stage to continue from (epoch, optimizer, RNG and all)."""


@dataclass
class StageResult:
    """A finished stage, as it appears in ``summary.json``."""

    name: str
    kind: str
    artifact: Artifact
    history: list[dict[str, Any]]
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        warnings = list(dict.fromkeys(row["warning"] for row in self.history if row.get("warning")))
        return {
            "name": self.name,
            "kind": self.kind,
            "metrics": self.artifact.metrics,
            "checkpoint": self.artifact.checkpoint,
            "wall_s": round(self.wall_s, 3),
            "history": self.history,
            **({"warnings": warnings} if warnings else {}),
            **self.extra,
        }


def worker_spec(stage, context: StageContext, **options: Any) -> WorkerSpec:
    """What every worker of ``stage`` is handed, whichever way it runs (a Ray Train run, in
    process, a Tune trial): its data's shape, the weights it starts from, the checkpoint it
    resumes and the progress queue; ``options`` set the rest (or replace these)."""
    return WorkerSpec(**{"stage": stage, "info": context.source.info, "init_checkpoint": init_checkpoint(stage, context),
                         "resume_checkpoint": context.resume_checkpoint, "progress": context.progress_queue,
                         **options})


def init_checkpoint(stage, context: StageContext) -> str | None:
    """The weights the stage starts from (``init_from``: an earlier stage's artifact, or the file
    or folder as given), or None."""
    if stage.init_from is None:
        return None
    if stage.init_from.path == "previous":
        return context.previous.checkpoint
    if stage.init_from.path in context.artifacts:
        return context.artifacts[stage.init_from.path].checkpoint
    return stage.init_from.path


def publish_checkpoint(checkpoint_dir: str | Path, stage_dir: Path) -> Artifact:
    """Copy the run's last checkpoint to ``stage_dir/checkpoint.pt`` (atomically)."""
    state = load_checkpoint(Path(checkpoint_dir) / CHECKPOINT_FILE)
    path = save_atomic(state, stage_dir / ARTIFACT_FILE)
    return Artifact(checkpoint=str(path), metrics=dict(state["metrics"]))
