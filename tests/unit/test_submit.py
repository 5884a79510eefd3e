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
