"""Stage runners: driver-side code that turns one stage config into a Ray run.

``dispatch.py: run_stage`` is the one entry; ``train_run.py`` (one Ray Train run),
``tune.py`` (trials that each start one), ``param_server.py`` (Ray actors) and
``local_run.py`` (local mode in the driver's process, without Ray) are the execution
paths it chooses between; ``base.py`` holds what passes between stages.
"""

from __future__ import annotations

from rayeffi.stages.base import Artifact, StageContext, StageResult
from rayeffi.stages.dispatch import run_stage

__all__ = ["Artifact", "StageContext", "StageResult", "run_stage"]
