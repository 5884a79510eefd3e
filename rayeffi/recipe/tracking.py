"""``tracking:``: where a run's epoch metrics go besides ``summary.json``.

```yaml
tracking:
  tensorboard: true                  # default; or false, or {logdir: DIR} (default OUT/tensorboard)
  mlflow: {tracking_uri: http://127.0.0.1:5000, experiment: digits}
```

Only the shape of the values is checked here; whether the logdir is writable and the
tracking server answers is checked by :func:`rayeffi.tracking.open_tracker` before Ray
starts.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from rayeffi.recipe.sections import Section

MLFLOW_SCHEMES = ("file", "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")
"""Tracking URI schemes MLflow's client understands (a plain path means ``file:``)."""


class TensorBoardConfig(Section):
    """TensorBoard event files, one directory per stage (and per Tune trial)."""

    enabled: bool = True
    logdir: str | None = None
    """Root of the event files; default ``OUT/tensorboard``."""

    @model_validator(mode="before")
    @classmethod
    def _switch(cls, raw: Any) -> Any:
        return {"enabled": raw} if isinstance(raw, bool) else raw  # `tensorboard: false` is the short form


class MlflowConfig(Section):
    """One MLflow parent run per recipe run, a child run per stage, Tune trials as the stage's children."""

    tracking_uri: str = Field(min_length=1)
    """``http(s)://HOST:PORT`` of an ``mlflow server``, ``file:/DIR``, ``sqlite:///FILE``, ..."""
    experiment: str = Field("rayeffi", min_length=1, max_length=500)
    """Created when it does not exist."""
    run_name: str | None = None
    """The parent run's name; default the recipe's ``name``."""
    log_checkpoints: bool = True
    """Log each stage's ``checkpoint.pt`` as an artifact of the stage's run."""

    @field_validator("tracking_uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        scheme = uri.split("://", 1)[0].split(":", 1)[0].lower() if ":" in uri else ""
        if scheme and scheme not in MLFLOW_SCHEMES:
            raise ValueError(
                f"tracking_uri {uri!r} has an unknown scheme {scheme!r}: use one of {', '.join(MLFLOW_SCHEMES)} "
                "(e.g. http://127.0.0.1:5000 or file:/path/to/mlruns)"
            )
        return uri

    @field_validator("experiment")
    @classmethod
    def _printable_name(cls, name: str) -> str:
        if name != name.strip() or not name.isprintable():
            raise ValueError(
                f"experiment {name!r} has leading or trailing spaces or unprintable characters: give a plain name"
            )
        return name


class TrackingConfig(Section):
    """Experiment tracking of every stage's epoch metrics (TensorBoard on by default)."""

    tensorboard: TensorBoardConfig = TensorBoardConfig()
    mlflow: MlflowConfig | None = None
