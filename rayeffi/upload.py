"""What ``rayeffi submit`` uploads as the job's working directory, and what it never does.

The rule, whatever ``.gitignore`` says:

- **never uploaded:** secrets, keys, tokens and cloud credentials (``.env``, ``.netrc``,
  ``*.pem``, ``*.key``, ``id_rsa``, ``*secret*``, ``*credential*``, ``auth_token``,
  ``service-account*.json``, ...), every tool dot-directory (``.aws/``, ``.ssh/``,
  ``.ray/``, ``.git/``, ``.venv/``, ``.config/``, ...), run directories and build output,
  and files over :data:`LARGE_FILE_BYTES`;
- **refused:** a working directory that is a home directory, or whose upload would
  exceed :data:`UPLOAD_LIMIT_BYTES`.

The walk is Ray's own (``.gitignore`` and the excludes applied the way Ray packages
the directory), so what is counted here is what the cluster receives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rayeffi.errors import UserError

EXCLUDES = (
    ".git", ".venv", "venv", ".tox", "__pycache__", "*.egg-info", ".pytest_cache",
    "/runs/", "/build/", "/dist/",
)
"""Never uploaded, as not part of the project (gitignore syntax, as Ray's ``excludes``)."""
SECRET_EXCLUDES = (
    ".*/",  # tool dot-directories: .aws, .ssh, .ray, .gnupg, .kube, .docker, .config, .azure ...
    ".env", ".env.*", "*.env", ".netrc", "_netrc", ".pgpass", ".htpasswd", ".npmrc", ".pypirc",
    ".git-credentials", ".dockercfg", "kubeconfig", "*.kubeconfig",
    "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.ppk", "*.gpg", "*.asc",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
    "*secret*", "*Secret*", "*SECRET*", "*credential*", "*Credential*", "*CREDENTIAL*",
    "*token", "*_token*", "*.token", "*-token*", "auth_token*",
    "service-account*.json", "service_account*.json", "*-sa.json", "*.tfstate", "*.tfvars",
)
"""Secrets, keys, tokens and credentials: never uploaded, even where ``.gitignore`` allows them."""
LARGE_FILE_BYTES = 16 * 1024 * 1024
"""Files above this size stay behind: Ray caps a whole package at ~512 MiB, and data
that large belongs on shared storage (give its path or URI in the recipe)."""
UPLOAD_LIMIT_BYTES = 256 * 1024 * 1024
"""A working directory whose upload would be larger than this is refused: it is
not a project directory (or it holds data that belongs on shared storage)."""


@dataclass
class Manifest:
    """The files a submission uploads and those it leaves out, by reason."""

    num_files: int = 0
    num_bytes: int = 0
    secrets: list[str] = field(default_factory=list)
    """Relative paths left out as secrets, keys, tokens or inside tool dot-directories."""
    large: list[tuple[str, int]] = field(default_factory=list)
    """``(relative path, bytes)`` of files over the size limit."""

    def lines(self, working_dir: Path) -> list[str]:
        """What ``rayeffi submit`` prints before it submits."""
        lines = [f"uploading {self.num_files} files, {_size(self.num_bytes)}, from {working_dir}"]
        if self.secrets:
            shown = ", ".join(self.secrets[:8]) + (f", ... ({len(self.secrets) - 8} more)" if len(self.secrets) > 8 else "")
            lines.append(f"left out {len(self.secrets)} secret, key, token or dot-directory files (never uploaded): {shown}")
        for path, size in self.large:
            lines.append(f"left out ({_size(size)}, over {_size(LARGE_FILE_BYTES)}; put it on shared storage): {path}")
        return lines


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB" if num_bytes >= 2**20 else f"{num_bytes / 1024:.1f} KiB"


def check_working_dir(working_dir: Path) -> None:
    """A home directory is never a job's working directory: it holds every credential of its user."""
    homes = {Path.home().resolve(), Path("/root"), Path("/")}
    if working_dir in homes or working_dir.parent == Path("/home"):
        raise UserError(
            f"--working-dir {working_dir} is a home directory (or the root), which holds credentials and far "
            "more than a project: run rayeffi submit from the project's directory, or pass --working-dir"
        )


def build_manifest(working_dir: Path) -> Manifest:
    """Walk ``working_dir`` as Ray packages it and sort every file: uploaded, secret, or too large."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    is_secret = _get_excludes(working_dir, list(SECRET_EXCLUDES))
    manifest = Manifest()

    def visit(path: Path) -> None:
        if not path.is_file() or path.is_symlink():
            return
        relative = path.relative_to(working_dir).as_posix()
        size = path.stat().st_size
        if is_secret(path):
            manifest.secrets.append(relative)
        elif size > LARGE_FILE_BYTES:
            manifest.large.append((relative, size))
        else:
            manifest.num_files += 1
            manifest.num_bytes += size

    quiet = logging.getLogger("quiet-ray-packaging")  # Ray logs each .gitignore it applies, at INFO
    quiet.setLevel(logging.WARNING)
    _dir_travel(working_dir, [_get_excludes(working_dir, list(EXCLUDES))], visit, include_gitignore=True,
                logger=quiet)
    manifest.secrets.sort()
    manifest.large.sort()
    if manifest.num_bytes > UPLOAD_LIMIT_BYTES:
        raise UserError(
            f"--working-dir {working_dir} would upload {_size(manifest.num_bytes)} in {manifest.num_files} files, "
            f"over the {_size(UPLOAD_LIMIT_BYTES)} limit: submit from the project's directory, and put data on "
            "shared storage (give its path or URI in the recipe)"
        )
    return manifest
