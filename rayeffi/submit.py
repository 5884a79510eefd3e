"""``rayeffi submit``: a recipe as a Ray job on a running cluster.

The recipe is validated here first (a bad key costs no cluster time), then submitted
through Ray's ``JobSubmissionClient`` with a runtime environment whose working
directory is the current directory (without secrets, keys, credentials, tool
dot-directories, run directories and large files: the rule is in ``rayeffi/upload.py``)
and, when that directory does not hold it, the rayeffi package itself. The job's entrypoint is ``python -m rayeffi run RECIPE --address
auto ...``: the driver runs on the cluster and joins it.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import rayeffi
from rayeffi.errors import UserError
from rayeffi.recipe import load_recipe
from rayeffi.upload import (  # noqa: F401 (LARGE_FILE_BYTES: part of this module's interface)
    EXCLUDES,
    LARGE_FILE_BYTES,
    SECRET_EXCLUDES,
    Manifest,
    build_manifest,
    check_working_dir,
)

SUCCEEDED, FAILED, STOPPED = "SUCCEEDED", "FAILED", "STOPPED"
TERMINAL = {SUCCEEDED, FAILED, STOPPED}


@dataclass(frozen=True)
class Submission:
    entrypoint: str
    runtime_env: dict[str, Any]
    out: str
    skipped_large: tuple[tuple[str, int], ...] = ()
    """``(relative path, bytes)`` of large files left out of the working directory."""
    manifest: Manifest | None = None
    """What is uploaded and what is left out, by reason (``rayeffi/upload.py``)."""


def build_submission(
    recipe_path: str | Path,
    overrides: list[str] = (),
    smoke: bool = False,
    out: str | None = None,
    storage: str | None = None,
    working_dir: str | Path = ".",
) -> Submission:
    """Validate the recipe and describe the job: entrypoint, runtime environment, run directory."""
    recipe = load_recipe(recipe_path, overrides, smoke=smoke)  # UserError on a bad key, before any upload
    working_dir = Path(working_dir).resolve()
    check_working_dir(working_dir)
    recipe_file = Path(recipe_path).resolve()
    if not recipe_file.is_relative_to(working_dir):
        raise UserError(
            f"recipe {recipe_path} is outside the working directory {working_dir}, which is what the job "
            "receives: run rayeffi submit from a directory that holds the recipe, or pass --working-dir"
        )
    # the run directory is on the cluster: a default under the head's home, never inside the
    # job's unpacked working directory (Ray deletes and shares those)
    out = out or f"$HOME/rayeffi-runs/{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    argv = ["python", "-m", "rayeffi", "run", recipe_file.relative_to(working_dir).as_posix(), "--address", "auto"]
    for override in overrides:
        argv += ["--set", override]
    if smoke:
        argv.append("--smoke")
    if storage:
        argv += ["--storage", storage]
    entrypoint = " ".join(shlex.quote(arg) for arg in argv) + " --out " + _shell_path(out)
    manifest = build_manifest(working_dir)
    runtime_env: dict[str, Any] = {
        "working_dir": str(working_dir),
        "excludes": list(EXCLUDES) + list(SECRET_EXCLUDES) + [_anchored(path) for path, _ in manifest.large],
    }
    package = Path(rayeffi.__file__).resolve().parent
    if not package.is_relative_to(working_dir):  # the cluster runs this rayeffi, not whatever it has
        runtime_env["py_modules"] = [str(package)]
    return Submission(entrypoint, runtime_env, out, tuple(manifest.large), manifest)


def _shell_path(path: str) -> str:
    """Quote a path for the job's shell, leaving a leading ``$HOME``/``~`` to expand there."""
    for prefix in ("$HOME/", "~/"):
        if path.startswith(prefix):
            return '"$HOME"/' + shlex.quote(path[len(prefix):])
    return shlex.quote(path)


def _anchored(relative: str) -> str:
    """A gitignore pattern matching exactly this path below the working directory."""
    escaped = "".join("\\" + c if c in "*?[]!#\\" else c for c in relative)
    return "/" + escaped


def connect(address: str):
    """A ``JobSubmissionClient`` for the dashboard at ``address``, or a UserError saying why not."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, or a RuntimeError for a bad scheme or an auth failure
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"--address {address}: no Ray dashboard answered ({detail[:200]}); give the head's dashboard "
            "address, e.g. http://HOST:8265, and check the cluster is up (with token auth, export "
            "RAY_AUTH_MODE=token and the cluster's token)"
        ) from None


def submit(args, echo: Callable[[str], None] = print) -> int:
    """The ``submit`` command: returns the exit status (the job's outcome with ``--wait``)."""
    submission = build_submission(args.recipe, args.overrides, args.smoke, args.out, args.storage, args.working_dir)
    client = connect(args.address)
    for line in submission.manifest.lines(Path(submission.runtime_env["working_dir"])):
        echo(line)
    job_id = client.submit_job(entrypoint=submission.entrypoint, runtime_env=submission.runtime_env)
    echo(job_id)
    echo(f"run directory on the cluster: {submission.out}")
    if not args.wait:
        echo(f"logs: ray job logs --address {args.address} --follow {job_id}")
        return 0
    status = wait_for(client, job_id, lambda line: print(line, end="", flush=True))
    info = client.get_job_info(job_id)
    reason = (info.message or "").strip().splitlines()[:1] if status != SUCCEEDED else []
    echo(f"job {job_id}: {status}" + "".join(f" ({line})" for line in reason))
    return 0 if status == SUCCEEDED else 1


def wait_for(client, job_id: str, write: Callable[[str], None]) -> str:
    """Stream the job's logs until it ends; return its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except Exception as exc:  # the log stream can drop; the status below still decides
        print(f"(log stream ended: {type(exc).__name__})", file=sys.stderr)
    while (status := client.get_job_status(job_id).value) not in TERMINAL:
        time.sleep(1.0)
    return status
