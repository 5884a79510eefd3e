"""``rayeffi report DIR`` writes one page with every stage; a headless Chromium renders it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from rayeffi.cli import main

CHROMIUM_TIMEOUT_S = 120


def _epoch(epoch, **extra):
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 1.2 / epoch, "val_accuracy": 0.5 + epoch / 10,
            "lr": 0.1, "samples_per_s": 1000.0, **extra}


def _dsd_epoch(epoch, phase, sparsity):
    row = _epoch(epoch, dsd_phase=phase, dsd_round=1, sparsity=sparsity, target_sparsity=0.5,
                 layer_sparsity={"layers.0.weight": sparsity})
    if epoch == 2:
        row["pruning_histogram"] = {"log10_edges": [-3.0, -2.0, -1.0], "before": [5, 7], "after": [0, 7]}
    return row


def _summary(tmp_path):
    history_fp16 = [_epoch(1, loss_scale=32768.0, skipped_steps=1, grad_underflow_fp16=0.01,
                           loss_scale_history=[[0, 65536.0], [3, 32768.0]]),
                    _epoch(2, loss_scale=65536.0, skipped_steps=1, grad_underflow_fp16=0.0,
                           loss_scale_history=[[8, 65536.0]])]
    dsd_history = [_dsd_epoch(1, "dense", 0.0), _dsd_epoch(2, "sparse", 0.5), _dsd_epoch(3, "redense", 0.0)]
    stage = {"wall_s": 1.5, "num_workers": 2, "checkpoint": str(tmp_path / "stages" / "x" / "checkpoint.pt")}
    return {
        "recipe": {"name": "page", "seed": 0, "stages": [{"name": "fp16"}, {"name": "dsd"}, {"name": "search"}]},
        "status": "complete", "wall_s": 12.0,
        "tracking": {"tensorboard": {"logdir": str(tmp_path / "tensorboard")}},
        "stages": [
            {"name": "fp16", "kind": "train", "metrics": history_fp16[-1], "history": history_fp16, **stage},
            {"name": "dsd", "kind": "dsd", "metrics": dsd_history[-1], "history": dsd_history, **stage,
             "rounds": [{"phase": "sparse", "round": 1, "epochs": [2, 2], "target_sparsity": 0.5,
                         "measured_sparsity": 0.5, "lr": 0.1, "val_accuracy": 0.7}]},
            {"name": "search", "kind": "train", "metrics": _epoch(1), "history": [_epoch(1)], **stage,
             "best_trial": "t1", "best_config": {"optimizer.lr": 0.2},
             "trials": [{"trial_id": "t1", "config": {"optimizer.lr": 0.2}, "status": "done", "epochs_run": 1,
                         "metrics": _epoch(1)},
                        {"trial_id": "t2", "config": {"optimizer.lr": 9.0}, "status": "error", "epochs_run": 0,
                         "metrics": {}, "error": "RuntimeError: <diverged>"}]},
        ],
    }


@pytest.fixture
def report_page(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(_summary(tmp_path)))
    assert main(["report", str(tmp_path)]) == 0
    return tmp_path / "report" / "index.html"


def test_the_page_has_every_stage_its_pictures_and_tables(report_page):
    page = report_page.read_text()
    for name in ("fp16", "dsd", "search"):
        assert f'id="stage-{name}"' in page
    for image in ("fp16.png", "dsd.png", "dsd-phases.png", "dsd-pruning.png", "search.png"):
        assert f'src="{image}"' in page and (report_page.parent / image).is_file()
    assert "Dense-Sparse-Dense phases" in page and "Loss scale" in page and "Tune trials" in page
    assert "RuntimeError: &lt;diverged&gt;" in page  # escaped, not markup
    assert 'id="recipe"' in page and "tensorboard --logdir" in page


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless Chromium on this machine (Debian: apt-get install chromium)")


def test_chromium_renders_the_page_with_every_stage(report_page, tmp_path):
    browser = _chromium()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", report_page.as_uri()], capture_output=True, text=True,
                         timeout=CHROMIUM_TIMEOUT_S)
    assert dom.returncode == 0, dom.stderr[-2000:]
    sections = re.findall(r'<section id="stage-([^"]+)"', dom.stdout)
    assert sections == ["fp16", "dsd", "search"]
    screenshot = tmp_path / "page.png"
    shot = subprocess.run([*flags, f"--screenshot={screenshot}", "--window-size=1200,2000", report_page.as_uri()],
                          capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
