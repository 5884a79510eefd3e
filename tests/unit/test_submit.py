"""``rayeffi submit`` without a cluster: the job it would submit, what Ray would upload, errors."""

from __future__ import annotations

import shlex
import socket
import zipfile
from pathlib import Path

import pytest
from ray._private.runtime_env.packaging import create_package

from rayeffi.cli import build_parser, main
from rayeffi.errors import UserError
from rayeffi.submit import LARGE_FILE_BYTES, build_submission

ROOT = Path(__file__).resolve().parents[2]


def test_entrypoint_is_rayeffi_run_joining_the_cluster(monkeypatch):
    monkeypatch.chdir(ROOT)
    job = build_submission("examples/quickstart.yaml", ["optimizer.lr=0.05"], smoke=True,
                           out="/mnt/shared/runs/q", storage="s3://bucket/rayeffi")
    argv = shlex.split(job.entrypoint)
    assert argv[:3] == ["python", "-m", "rayeffi"]
    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.recipe, args.address) == ("run", "examples/quickstart.yaml", "auto")
    assert args.overrides == ["optimizer.lr=0.05"] and args.smoke
    assert (args.out, args.storage) == ("/mnt/shared/runs/q", "s3://bucket/rayeffi")
    assert job.runtime_env["working_dir"] == str(ROOT)
    assert "py_modules" not in job.runtime_env  # the working directory holds the package already


def test_default_run_directory_is_under_the_heads_home(monkeypatch):
    monkeypatch.chdir(ROOT)
    job = build_submission("examples/quickstart.yaml")
    assert job.entrypoint.split(" --out ")[1].startswith('"$HOME"/rayeffi-runs/quickstart-')


def test_the_package_travels_when_the_working_directory_lacks_it(tmp_path, monkeypatch):
    (tmp_path / "recipe.yaml").write_text((ROOT / "examples/quickstart.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    job = build_submission("recipe.yaml")
    assert job.runtime_env["py_modules"] == [str(ROOT / "rayeffi")]


def test_ray_packages_the_repository_without_git_venv_or_runs(tmp_path):
    job = build_submission(ROOT / "examples/quickstart.yaml", working_dir=ROOT)
    package = tmp_path / "package.zip"
    create_package(str(ROOT), package, include_gitignore=True, excludes=job.runtime_env["excludes"])
    names = zipfile.ZipFile(package).namelist()
    assert "rayeffi/cli.py" in names and "examples/quickstart.yaml" in names
    for excluded in (".git/", ".venv/", "runs/"):
        assert not any(name.startswith(excluded) for name in names), excluded
    assert package.stat().st_size < 8 * 2**20


def test_large_files_stay_behind(tmp_path):
    (tmp_path / "recipe.yaml").write_text((ROOT / "examples/quickstart.yaml").read_text())
    (tmp_path / "data").mkdir()
    with open(tmp_path / "data/big [1].parquet", "wb") as handle:
        handle.truncate(LARGE_FILE_BYTES + 1)  # sparse: large to stat, free to write
    (tmp_path / "data/small.parquet").write_bytes(b"x" * 100)
    job = build_submission(tmp_path / "recipe.yaml", working_dir=tmp_path)
    assert job.skipped_large == (("data/big [1].parquet", LARGE_FILE_BYTES + 1),)
    package = tmp_path.parent / f"{tmp_path.name}.zip"
    create_package(str(tmp_path), package, include_gitignore=True, excludes=job.runtime_env["excludes"])
    names = zipfile.ZipFile(package).namelist()
    assert "data/small.parquet" in names and "data/big [1].parquet" not in names


def test_a_recipe_outside_the_working_directory_is_refused(tmp_path):
    with pytest.raises(UserError, match="outside the working directory"):
        build_submission(ROOT / "examples/quickstart.yaml", working_dir=tmp_path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_address_exits_2_with_one_line(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    status = main(["submit", "examples/quickstart.yaml", "--address", f"http://127.0.0.1:{_free_port()}"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: --address http://127.0.0.1:") and err.count("\n") == 1


def test_a_bad_recipe_key_fails_before_any_connection(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    status = main(["submit", "examples/quickstart.yaml", "--set", "optimizer.lrr=1", "--address", "http://nowhere:1"])
    err = capsys.readouterr().err
    assert status == 2 and "optimizer.lrr" in err and "--address" not in err


def test_run_on_an_address_where_nothing_listens_exits_2(capsys, tmp_path):
    status = main(["run", str(ROOT / "examples/quickstart.yaml"), "--address", f"127.0.0.1:{_free_port()}",
                   "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: --address 127.0.0.1:") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before Ray, nothing written


SECRETS = [".aws/credentials", ".env", ".netrc", ".ray/auth_token", ".ssh/id_rsa", "secrets.json",
           "service-account.pem", "config/service-account-prod.json", "keys/server.key", ".config/gcloud/adc.json",
           "deploy/api_token", ".git-credentials", "prod.env"]


def _project_with_secrets(root: Path) -> Path:
    (root / "recipe.yaml").write_text((ROOT / "examples/quickstart.yaml").read_text())
    (root / "train.py").write_text("print('hi')\n")
    (root / ".gitignore").write_text("!*\n")  # whatever .gitignore says
    for name in SECRETS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("hunter2\n")
    return root


def test_secrets_never_go_whatever_gitignore_says(tmp_path):
    _project_with_secrets(tmp_path)
    job = build_submission(tmp_path / "recipe.yaml", working_dir=tmp_path)
    package = tmp_path.parent / f"{tmp_path.name}-secrets.zip"
    create_package(str(tmp_path), package, include_gitignore=True, excludes=job.runtime_env["excludes"])
    names = zipfile.ZipFile(package).namelist()
    assert "recipe.yaml" in names and "train.py" in names
    leaked = [name for name in names if any(name == s or name.startswith(s.split("/")[0] + "/") and s.startswith(".")
                                            for s in SECRETS) or name in SECRETS]
    assert leaked == [], leaked
    assert sorted(job.manifest.secrets) == sorted(SECRETS)
    assert job.manifest.num_files == 3  # recipe.yaml, train.py and the .gitignore


def test_submit_prints_what_it_uploads_and_leaves_out(tmp_path, monkeypatch):
    _project_with_secrets(tmp_path)
    job = build_submission(tmp_path / "recipe.yaml", working_dir=tmp_path)
    lines = job.manifest.lines(tmp_path)
    assert lines[0].startswith("uploading 3 files, ") and lines[0].endswith(f"from {tmp_path}")
    assert lines[1].startswith(f"left out {len(SECRETS)} secret, key, token or dot-directory files (never uploaded): ")


def test_a_home_directory_is_refused(monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "recipe.yaml").write_text((ROOT / "examples/quickstart.yaml").read_text())
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(UserError, match="is a home directory"):
        build_submission(home / "recipe.yaml", working_dir=home)


def test_a_working_directory_over_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("rayeffi.upload.UPLOAD_LIMIT_BYTES", 1000)
    (tmp_path / "recipe.yaml").write_text((ROOT / "examples/quickstart.yaml").read_text())
    (tmp_path / "notes.txt").write_text("x" * 2000)
    with pytest.raises(UserError, match=r"would upload .* over the 1.0 KiB limit"):
        build_submission(tmp_path / "recipe.yaml", working_dir=tmp_path)


def test_nothing_listening_is_one_line_from_the_console_script():
    """Ray's packaging logs (one INFO line per .gitignore) must not reach the terminal either."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "rayeffi", "submit", "examples/quickstart.yaml", "--address",
                           f"http://127.0.0.1:{_free_port()}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --address http://127.0.0.1:"), lines
