"""Local mode without Ray: a recipe of ``scaling.num_workers: 0`` stages runs in the driver's
process where ``import ray`` fails; its checkpoints land in the storage, ``--resume`` continues
from them, and the soft-label cache is computed in process. (Parity with Ray Train's local
mode: ``tests/ray/test_train_stage.py``.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from rayeffi.checkpoint import load_checkpoint
from rayeffi.cli import main
from rayeffi.data import builtin_digits_paths
from rayeffi.data.arrow_datasets import ArrowDataset, build_arrow_datasets, column_tensor, held_out_split
from rayeffi.data.sources import resolve_source
from rayeffi.recipe import load_recipe
from rayeffi.recipe.sections import DataConfig
from rayeffi.stages.local_run import needs_ray
from rayeffi.worker.batches import ShardBatches

ROOT = Path(__file__).resolve().parents[2]

WITHOUT_RAY = textwrap.dedent("""
    import sys
    sys.modules["ray"] = None  # every `import ray` raises ImportError, as where Ray is not installed
    from rayeffi.cli import main
    code = main(sys.argv[1:])
    loaded = sorted(name for name, module in sys.modules.items()
                    if (name == "ray" or name.startswith("ray.")) and module is not None)
    print("RAY MODULES", loaded)
    sys.exit(code)
""")


def _run_without_ray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_RAY, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_a_recipe_of_local_stages_runs_where_ray_cannot_be_imported(tmp_path):
    """Train, a dense MLP, then DSD + distillation from a soft-label cache: every stage in process."""
    out = tmp_path / "out"
    done = _run_without_ray("run", "examples/prune_distill.yaml", "--smoke", "--set", "scaling.num_workers=0",
                            "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RAY MODULES []" in done.stdout
    assert "on the driver (local mode)" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert [stage["name"] for stage in summary["stages"]] == ["teacher", "dense", "sparse_kd"]
    for stage in summary["stages"]:
        assert {"metrics", "checkpoint", "history", "wall_s", "num_workers", "restarts", "data_info"} <= set(stage)
        assert stage["num_workers"] == 0 and stage["restarts"] == []
        assert Path(stage["checkpoint"]) == out / "stages" / stage["name"] / "checkpoint.pt"
        # each report went where Ray Train keeps them: STORAGE/NAME-xxxxxxxx/checkpoint_*/state.pt, the last two
        kept = sorted((out / "ray").glob(f"{stage['name']}-*/checkpoint_*/state.pt"))
        assert len(kept) == min(2, len(stage["history"]))
        last, artifact = load_checkpoint(kept[-1])["model"], load_checkpoint(stage["checkpoint"])["model"]
        assert all(torch.equal(last[name], value) for name, value in artifact.items())
    sparse_kd = summary["stages"][2]
    assert sparse_kd["techniques"] == ["dsd", "distill"] and sparse_kd["rounds"]
    assert sparse_kd["metrics"]["val_accuracy"] > 0.3  # the smoke run's 2 epochs, far above chance (0.1)
    _cached_logits_are_the_teachers(Path(sparse_kd["cache"]["path"]), summary["stages"][0], out)


def _cached_logits_are_the_teachers(cache: Path, teacher_entry: dict, out: Path) -> None:
    """The in-process cache holds every training row, in order, with the teacher's own logits."""
    from rayeffi.data.info import DatasetInfo
    from rayeffi.models import build_model

    recipe = load_recipe(json.loads((out / "summary.json").read_text())["recipe"])
    table = pads.dataset(str(cache / "train"), format="parquet").to_table()
    features, logits = column_tensor(table["features"]), column_tensor(table["teacher_logits"])
    train_path, _ = builtin_digits_paths()
    assert torch.equal(features, column_tensor(pads.dataset(train_path).to_table()["features"])[:len(features)])
    teacher = build_model(recipe.stage("teacher").model, DatasetInfo(**teacher_entry["data_info"]))
    teacher.load_state_dict(load_checkpoint(teacher_entry["checkpoint"])["model"])
    with torch.no_grad():
        torch.testing.assert_close(logits, teacher.eval()(features), rtol=1e-5, atol=1e-5)


def test_resume_in_local_mode_continues_from_the_storages_checkpoint(tmp_path, capsys):
    """A driver that died after its last epoch's checkpoint, before publishing: ``--resume`` reruns
    that epoch from the checkpoint before it and ends with the uninterrupted run's weights."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 1\ndata: {dataset: digits, batch_size: 64, max_samples: 640}\n"
                      "model: {name: mlp, hidden_sizes: [32], dropout: 0.2}\n"
                      "optimizer: {name: sgd, lr: 0.1, momentum: 0.9}\nscaling: {num_workers: 0}\n"
                      "stages: [{name: train, kind: train, epochs: 3}]\n")
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    straight = load_checkpoint(summary["stages"][0]["checkpoint"])["model"]
    summary.update(stages=[], status="running")  # as the dead driver left it
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "stages" / "train" / "checkpoint.pt").unlink()
    capsys.readouterr()
    assert main(["run", str(recipe), "--out", str(out), "--resume"]) == 0
    assert "resuming from the checkpoint of epoch 2" in capsys.readouterr().out
    resumed = json.loads((out / "summary.json").read_text())["stages"][0]
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3]
    for name, value in straight.items():
        assert torch.equal(load_checkpoint(resumed["checkpoint"])["model"][name], value), name


def test_which_stages_need_ray():
    recipe = load_recipe(str(ROOT / "examples" / "quickstart.yaml"))
    stage = recipe.stages[0]
    assert needs_ray(stage)  # 2 workers
    local = load_recipe(str(ROOT / "examples" / "quickstart.yaml"), ["scaling.num_workers=0"]).stages[0]
    assert not needs_ray(local)
    tuned = load_recipe(str(ROOT / "examples" / "distill.yaml"), ["scaling.num_workers=0"]).stages[1]
    assert tuned.tune is not None and needs_ray(tuned)  # a Tune trial runs in its own Tune process


def test_arrow_batches_read_as_the_in_memory_shard_reads_them(tmp_path):
    """Every row once per epoch, ``[rows, width]`` float32 features and int64 labels, the same
    seeded order for the same seed; a held-out split keeps its sizes and loses no row."""
    source = resolve_source(DataConfig(dataset="digits", batch_size=64), 0, tmp_path)
    datasets = build_arrow_datasets(source, DataConfig(dataset="digits", batch_size=64, max_samples=500), 0)
    assert (len(datasets["train"]), len(datasets["val"])) == (500, 360)
    batches = ShardBatches(datasets["train"], 64, 0, 1 << 30)
    first = list(batches.epoch(7))
    assert [len(batch["label"]) for batch in first] == [64] * 7 + [52]
    assert first[0]["features"].dtype == torch.float32 and first[0]["features"].shape == (64, 64)
    assert first[0]["label"].dtype == torch.int64
    rows = torch.cat([batch["features"] for batch in first])
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, datasets["train"].tensors()["features"].tolist()))
    again = list(ShardBatches(datasets["train"], 64, 0, 1 << 30).epoch(7))
    assert all(torch.equal(a["features"], b["features"]) for a, b in zip(first, again))
    train, val = held_out_split(datasets["train"].table, 0.2, seed=3)
    assert (train.num_rows, val.num_rows) == (400, 100)
    both = np.concatenate([column_tensor(train["label"]).numpy(), column_tensor(val["label"]).numpy()])
    assert sorted(both.tolist()) == sorted(datasets["train"].tensors()["label"].tolist())


def test_a_streamed_arrow_shard_gives_every_row_once(tmp_path):
    """Over the memory budget (``data.in_memory_mb``) the shard streams, shuffled within a buffer."""
    source = resolve_source(DataConfig(dataset="digits", batch_size=64), 0, tmp_path)
    train = build_arrow_datasets(source, DataConfig(dataset="digits", batch_size=64), 0)["train"]
    batches = ShardBatches(train, 64, estimated_bytes=10, memory_budget=1, drop_last=True)
    labels = torch.cat([batch["label"] for batch in batches.epoch(5)])
    assert len(labels) == len(train) // 64 * 64
    assert not torch.equal(labels, train.tensors()["label"][:len(labels)])  # shuffled
    assert isinstance(train.limit(10), ArrowDataset) and len(train.limit(10)) == 10


def test_a_list_column_becomes_a_matrix():
    import pyarrow as pa

    rows = [[1.0, 2.0], [3.0, 4.0]]
    assert torch.equal(column_tensor(pa.array(rows, pa.list_(pa.float64()))), torch.tensor(rows, dtype=torch.float64))
    assert torch.equal(column_tensor(pa.array(rows, pa.list_(pa.float32(), 2))), torch.tensor(rows))
    with pytest.raises(ValueError, match="different lengths"):
        column_tensor(pa.array([[1.0], [2.0, 3.0]]))
