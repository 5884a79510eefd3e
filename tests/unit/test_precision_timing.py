"""Precision that never slows training unknowingly: the timing, the warning, ``precision: auto``, and the
two CPU fixes (the ``lm``'s attention and LSTMs in FP32 under autocast)."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rayeffi.cli import main
from rayeffi.driver import precision_check
from rayeffi.models.lm import causal_attention
from rayeffi.models.lstm_lm import LSTMLM
from rayeffi.precision import build_precision, needs_onednn_off
from rayeffi.precision.recurrent import run_lstms_in_fp32
from rayeffi.precision.timing import PolicyTiming, auto_choice, slowdown_warning, time_alternating
from rayeffi.recipe.sections import PrecisionConfig


def test_time_alternating_alternates_and_stays_in_its_budget():
    calls = []
    steps = {"fast": lambda: calls.append("fast"), "slow": lambda: (calls.append("slow"), time.sleep(0.02))}
    times = time_alternating(steps, max_rounds=5, budget_s=10.0)
    assert calls == ["fast", "slow"] * 6  # one warm-up round, then 5 alternating rounds
    assert times["slow"] >= 20 > times["fast"]
    calls.clear()
    time_alternating(steps, max_rounds=5, budget_s=0.001)  # the warm-up alone overruns it: one timed round
    assert calls == ["fast", "slow"] * 2


@pytest.mark.parametrize("reduced_ms, warned", [(50.0, True), (44.5, True), (43.0, False), (20.0, False)])
def test_a_reduced_policy_more_than_10_percent_slower_is_one_warning_line(reduced_ms, warned):
    timing = PolicyTiming("bf16", reduced_ms, 40.0, "cpu", 32)
    line = slowdown_warning(timing, "stages.pretrain.precision")
    assert (line is not None) == warned
    if warned:
        assert "\n" not in line and line.startswith("warning: stages.pretrain.precision: bf16")
        assert f"{reduced_ms:.1f} ms" in line and "40.0 ms" in line and "stages.pretrain.precision=fp32" in line


@pytest.mark.parametrize("ratio, picked", [(0.5, "bf16"), (0.94, "bf16"), (0.96, "fp32"), (1.0, "fp32"),
                                           (3.0, "fp32")])
def test_auto_picks_the_reduced_policy_only_where_it_is_at_least_5_percent_faster(ratio, picked):
    assert auto_choice(PolicyTiming("bf16", 100.0 * ratio, 100.0, "cpu", 8)) == picked
    assert auto_choice(None) == "fp32"  # nothing timed: the safe policy


def test_auto_is_a_recipe_value_but_never_a_policy_object():
    assert PrecisionConfig(policy="auto").policy == "auto"
    with pytest.raises(ValueError, match="loss-scaling option"):
        PrecisionConfig(policy="auto", loss_scale=1024)  # auto never picks fp16 on its own keys
    with pytest.raises(ValueError, match="resolved by the driver"):
        build_precision(PrecisionConfig(policy="auto"))


def test_lm_attention_runs_in_fp32_under_cpu_autocast():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    reference = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.equal(causal_attention(q, k, v), reference)  # outside autocast: SDPA itself
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = tuple(t.bfloat16() for t in (q, k, v))
        out = causal_attention(*low)
        assert torch.is_autocast_enabled("cpu")  # autocast is back on for the layers after it
    assert out.dtype == torch.bfloat16
    exact = F.scaled_dot_product_attention(*(t.float() for t in low), is_causal=True)
    assert torch.equal(out, exact.bfloat16())  # computed in FP32 from the BF16 inputs, rounded once


def test_an_lstm_under_cpu_bf16_autocast_computes_in_fp32_with_onednn_on():
    torch.manual_seed(0)
    model = LSTMLM(vocab_size=20, d_model=16, num_layers=2)
    ids = torch.randint(0, 20, (3, 7))
    assert needs_onednn_off(model, "cpu")
    run_lstms_in_fp32(run_lstms_in_fp32(model))  # idempotent: one pair of hooks per LSTM
    assert not needs_onednn_off(model, "cpu") and len(model.lstm._forward_pre_hooks) == 1
    seen = {}
    model.lstm.register_forward_hook(lambda module, args, output: seen.update(dtype=output[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # oneDNN on: a BF16 LSTM would fail to build here
        logits = model(ids)
        assert torch.is_autocast_enabled("cpu")
    assert seen["dtype"] == torch.float32 and logits.dtype == torch.bfloat16  # the head stays in BF16
    F.cross_entropy(logits.float().flatten(0, 1), ids.flatten()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    hidden = model.lstm(model.embed(ids))[0]  # outside autocast the hooks change nothing
    assert hidden.dtype == torch.float32


def _fake_timing(ratio):
    def fake(stage, info, rows, task, policy, device):
        assert len(rows[0]) == stage.data_layout.rows_per_read  # one worker's batch
        return PolicyTiming(policy, 10.0 * ratio, 10.0, device.type, len(rows[0]))
    return fake


TEXT_RECIPE = """
name: auto
seed: 0
task: language_modeling
data: {dataset: text, seq_len: 16, batch_size: 16}
model: {name: lm, d_model: 16, num_layers: 1, num_heads: 2}
optimizer: {name: adamw, lr: 0.002}
precision: PRECISION
scaling: {num_workers: 0}
stages:
  - {name: pretrain, kind: train, epochs: 1}
"""


DIGITS_RECIPE = """
name: auto
seed: 0
data: {dataset: digits, batch_size: 64}
model: {name: mlp, hidden_sizes: [32]}
precision: auto
scaling: {num_workers: 0}
stages:
  - {name: pretrain, kind: train, epochs: 1}
"""


@pytest.mark.parametrize("ratio, picked", [(0.5, "bf16")])  # fp32's pick: test_validate_says_what_auto_picked
def test_auto_is_decided_once_on_the_driver_runs_and_is_recorded(tmp_path, monkeypatch, capsys, ratio, picked):
    monkeypatch.setattr(precision_check, "time_stage_step", _fake_timing(ratio))
    recipe = tmp_path / "auto.yaml"
    recipe.write_text(DIGITS_RECIPE)
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"[pretrain] precision auto: {picked} (bf16 {10 * ratio:.1f} ms a step against fp32 10.0 ms" in out
    assert "warning:" not in out  # auto never warns: it picked the faster policy
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["recipe"]["stages"][0]["precision"]["policy"] == "auto"  # the recipe as given
    assert summary["precision"]["pretrain"]["policy"] == picked
    assert summary["precision"]["pretrain"]["timing"]["ratio"] == ratio
    ran_bf16 = "loss_scale" in summary["stages"][0]["metrics"]  # the BF16 policy reports its (unit) scale
    assert ran_bf16 == (picked == "bf16")


def test_validate_warns_once_with_both_times_when_bf16_is_slower(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision_check, "time_stage_step", _fake_timing(2.0))
    recipe = tmp_path / "bf16.yaml"
    recipe.write_text(TEXT_RECIPE.replace("PRECISION", "bf16"))
    assert main(["validate", str(recipe)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: stages.pretrain.precision: bf16 is slower than fp32 on this cpu: 20.0 ms a step "
                        "against 10.0 ms (2.00x, 16 rows): set stages.pretrain.precision=fp32 (or auto, which "
                        "picks the faster policy)"]


def test_validate_says_what_auto_picked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision_check, "time_stage_step", _fake_timing(1.0))
    recipe = tmp_path / "auto.yaml"
    recipe.write_text(TEXT_RECIPE.replace("PRECISION", "auto"))
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "[pretrain] precision auto: fp32 (bf16 10.0 ms a step against fp32 10.0 ms (1.00x) on cpu" in out
    assert "warning:" not in out


def test_an_fp32_stage_is_not_timed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision_check, "time_stage_step", lambda *args: pytest.fail("an fp32 stage was timed"))
    recipe = tmp_path / "fp32.yaml"
    recipe.write_text(TEXT_RECIPE.replace("PRECISION", "fp32"))
    assert main(["validate", str(recipe)]) == 0


def test_the_real_timing_trains_the_stage_in_both_policies():
    from rayeffi.data.sources import resolve_source, sample_rows
    from rayeffi.recipe import load_recipe
    from rayeffi.task import build_task
    import yaml

    recipe = load_recipe(yaml.safe_load(TEXT_RECIPE.replace("PRECISION", "bf16")))
    stage = recipe.stages[0]
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as out:
        source = resolve_source(stage.data, stage.seed, Path(out), stage.task)
        rows = sample_rows(source, stage.data_layout.rows_per_read)
    threads = torch.get_num_threads()
    timing = precision_check.time_stage_step(stage, source.info, rows, build_task(stage.task), "bf16",
                                             torch.device("cpu"))
    assert torch.get_num_threads() == threads  # the worker's thread count only while timing
    assert timing.policy == "bf16" and timing.reduced_ms > 0 and timing.fp32_ms > 0 and timing.num_rows == 16
