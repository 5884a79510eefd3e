"""The resume plan from what a killed driver leaves on disk (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rayeffi.errors import UserError
from rayeffi.recipe import validate_recipe
from rayeffi.driver.resume import PROGRESS_FILE, first_difference, plan_resume
from rayeffi.driver.storage import resolve_storage
from rayeffi.checkpoint import save_atomic


def _recipe(second_epochs=4):
    return validate_recipe({
        "scaling": {"num_workers": 2},
        "stages": [{"name": "first", "kind": "train", "epochs": 1},
                   {"name": "second", "kind": "train", "epochs": second_epochs, "init_from": "previous"}],
    })


def _state(epoch: int) -> dict:
    return {"epoch": epoch, "model": {"w": torch.full((2,), float(epoch))}, "metrics": {"epoch": epoch}}


@pytest.fixture
def killed_run(tmp_path):
    """A run killed while ``second`` trained: ``first`` is in the summary, ``second`` has checkpoints."""
    out, storage = tmp_path / "out", tmp_path / "out" / "ray"
    first = save_atomic(_state(1), out / "stages/first/checkpoint.pt")
    summary = {"recipe": _recipe().model_dump(mode="json"), "status": "running", "storage": str(storage),
               "stages": [{"name": "first", "kind": "train", "checkpoint": str(first), "metrics": {"epoch": 1}}]}
    (out / "summary.json").write_text(json.dumps(summary))
    run = storage / "second-0123abcd"
    save_atomic(_state(2), run / "checkpoint_000001/state.pt")
    save_atomic(_state(3), run / "checkpoint_000002/state.pt")
    (run / "checkpoint_000003").mkdir()
    (run / "checkpoint_000003/state.pt").write_bytes((run / "checkpoint_000002/state.pt").read_bytes()[:100])
    save_atomic(_state(4), storage / "second-tune-89abcdef/checkpoint_000009/state.pt")  # not this stage's run
    lines = [{"stage": "first", "epoch": 1}, {"stage": "second", "event": "start", "from_epoch": 0}]
    lines += [{"stage": "second", "epoch": e, "train_loss": float(e)} for e in (1, 2, 3, 4)]
    lines += [{"stage": "second", "epoch": 2, "train_loss": -2.0}]  # a restart repeated epoch 2
    (out / PROGRESS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"stage": "sec')
    return out


def test_skips_completed_stages_and_resumes_from_the_newest_readable_checkpoint(killed_run):
    plan = plan_resume(_recipe(), killed_run)
    assert list(plan.completed) == ["first"]
    resumed = torch.load(plan.checkpoints["second"], weights_only=True)
    assert resumed["epoch"] == 3  # epoch 3's cut-short copy and the other run's epoch 4 are passed over
    assert [(row["epoch"], row["train_loss"]) for row in plan.histories["second"]] == [(1, 1.0), (2, -2.0), (3, 3.0)]
    assert plan.resumes == [{"skipped": ["first"], "stage": "second", "from_epoch": 3, "from_step": 0}]


def test_a_checkpoint_of_the_last_epoch_leaves_one_epoch_to_run(killed_run):
    out = killed_run
    summary = json.loads((out / "summary.json").read_text())
    summary["recipe"] = _recipe(second_epochs=3).model_dump(mode="json")
    (out / "summary.json").write_text(json.dumps(summary))
    plan = plan_resume(_recipe(second_epochs=3), out)
    assert torch.load(plan.checkpoints["second"], weights_only=True)["epoch"] == 2


def test_storage_given_as_a_file_uri(killed_run):
    plan = plan_resume(_recipe(), killed_run, storage=f"file://{killed_run / 'ray'}")
    assert torch.load(plan.checkpoints["second"], weights_only=True)["epoch"] == 3


def test_a_different_recipe_is_refused_naming_the_key(killed_run):
    with pytest.raises(UserError, match=r"stages\.second\.epochs is 5 now but was 4"):
        plan_resume(_recipe(second_epochs=5), killed_run)


def test_nothing_to_resume(tmp_path):
    with pytest.raises(UserError, match="summary.json does not exist"):
        plan_resume(_recipe(), tmp_path)


def test_first_difference_walks_dicts_and_lists():
    assert first_difference({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}}) == ("a.b.1", 2, 3)
    assert first_difference({"a": 1}, {"a": 1, "c": 2}) == ("c", None, 2)
    assert first_difference({"a": [1]}, {"a": [1]}) is None


def test_storage_paths_and_uris():
    out = Path("/tmp/run")
    assert resolve_storage(None, out) == "/tmp/run/ray"
    assert resolve_storage("s3://bucket/dir", out) == "s3://bucket/dir"
    assert resolve_storage("shared", out) == str(Path("shared").absolute())
    with pytest.raises(UserError, match="ftp://"):
        resolve_storage("ftp://host/dir", out)


def test_cli_resume_needs_the_run_directory(capsys, tmp_path):
    from rayeffi.cli import main

    recipe = Path(__file__).resolve().parents[2] / "examples/quickstart.yaml"
    assert main(["run", str(recipe), "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
    assert main(["run", str(recipe), "--resume", "--out", str(tmp_path)]) == 2
    assert "summary.json does not exist" in capsys.readouterr().err


def test_a_truncated_artifact_of_a_completed_stage_runs_that_stage_again(killed_run):
    artifact = killed_run / "stages/first/checkpoint.pt"
    artifact.write_bytes(artifact.read_bytes()[:64])
    plan = plan_resume(_recipe(), killed_run)
    assert plan.completed == {}
    assert plan.resumes[-1]["stage"] == "first" and plan.resumes[-1]["from_epoch"] == 0
    assert "cut short" in plan.resumes[-1]["unreadable_artifact"]


def test_epochs_the_driver_never_logged_come_back_from_the_checkpoint(tmp_path):
    """The driver died (SIGKILL) while the workers went on: its log stops at epoch 4, the last
    checkpoint (epoch 9) carries every epoch's metrics; the resumed history is 1..9 in both files."""
    import json

    from rayeffi.driver.resume import logged_history, recovered_history

    log = tmp_path / "progress.jsonl"
    log.write_text("".join(json.dumps({"stage": "train", "epoch": e, "train_loss": 1.0 / e}) + "\n"
                           for e in range(1, 5)) + '{"stage": "train", "epo')  # a line cut short
    carried = [{"epoch": e, "train_loss": 1.0 / e, "from": "checkpoint"} for e in range(1, 10)]
    history = recovered_history(log, "train", 9, carried)
    assert [row["epoch"] for row in history] == list(range(1, 10))
    assert "from" not in history[0] and history[4]["from"] == "checkpoint"  # the log's own rows win
    assert [row["epoch"] for row in logged_history(log, "train", 9)] == list(range(1, 10))
    assert recovered_history(log, "train", 9, carried) == history  # a second resume adds nothing
