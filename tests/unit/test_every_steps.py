"""Validation and checkpoints within an epoch (``eval_every_steps``, ``checkpoint_every_steps``):
the recipe keys and their refusals, when the hooks fire, the checkpoint's position fields (old
checkpoints read as an epoch boundary) and the ``--resume`` plan from a checkpoint within an epoch.

That a run resumed from such a checkpoint ends with an uninterrupted run's weights is
``tests/ray/test_train_stage.py: test_resume_within_an_epoch_equals_an_uninterrupted_run``.
"""

from __future__ import annotations

import json

import pytest
import torch

from rayeffi.checkpoint import checkpoint_position, checkpoint_state, save_atomic
from rayeffi.driver.resume import PROGRESS_FILE, plan_resume
from rayeffi.errors import UserError
from rayeffi.recipe.load import validate_recipe
from rayeffi.stages.progress import format_eval_line
from rayeffi.worker.within_epoch import WithinEpoch


def _raw(**stage_keys):
    return {"data": {"batch_size": 32}, "scaling": {"num_workers": 2},
            "stages": [{"name": "s", "kind": "train", "epochs": 2, **stage_keys}]}


def test_keys_parse_beside_early_stop():
    stage = validate_recipe(_raw(eval_every_steps=4, checkpoint_every_steps=3, early_stop={"patience": 2})).stages[0]
    assert (stage.eval_every_steps, stage.checkpoint_every_steps) == (4, 3)
    assert validate_recipe(_raw()).stages[0].eval_every_steps is None


TUNE = {"search_space": {"optimizer.lr": {"choice": [0.1, 0.01]}}, "num_samples": 1}


@pytest.mark.parametrize("stage_keys, expected", [
    ({"eval_every_steps": 0}, "eval_every_steps"),
    ({"checkpoint_every_steps": -1}, "checkpoint_every_steps"),
    ({"eval_every_step": 2}, "eval_every_step"),  # unknown key
    ({"eval_every_steps": 2, "parallel": {"strategy": "param_server", "num_servers": 1}},
     "param_server with eval_every_steps / checkpoint_every_steps: runs its epochs from the driver"),
    ({"checkpoint_every_steps": 2, "parallel": {"strategy": "pipeline", "num_stages": 2, "num_microbatches": 2}},
     "pipeline with eval_every_steps / checkpoint_every_steps: is not supported yet.*data_parallel"),
    ({"eval_every_steps": 2, "parallel": {"strategy": "intra_layer"}},
     "intra_layer with eval_every_steps / checkpoint_every_steps"),
    ({"checkpoint_every_steps": 2, "tune": TUNE}, "tune with eval_every_steps / checkpoint_every_steps: would report"),
])
def test_bad_values_and_combinations_are_refused_with_a_fix(stage_keys, expected):
    with pytest.raises(UserError, match=expected):
        validate_recipe(_raw(**stage_keys))


def _fired(epochs, steps, eval_every, checkpoint_every, batches_done=0):
    events = []
    for epoch in range(epochs):
        hooks = WithinEpoch(epoch=epoch, steps_per_epoch=steps, batches_done=batches_done, eval_every=eval_every,
                            checkpoint_every=checkpoint_every,
                            evaluate=lambda g, e: events.append(("eval", g, e)),
                            checkpoint=lambda s, g, e: events.append(("checkpoint", s, g, e)))
        for step in range(steps):
            hooks.after_step(step, last=step == steps - 1)
    return events


def test_hooks_fire_on_global_steps_but_never_on_an_epochs_last():
    # 8 steps an epoch: eval at global 4 and 12 (8 and 16 end an epoch: the epoch's own report)
    events = _fired(2, 8, eval_every=4, checkpoint_every=3)
    assert [e for e in events if e[0] == "eval"] == [("eval", 4, 0.5), ("eval", 12, 1.5)]
    assert [e[1:] for e in events if e[0] == "checkpoint"] == [(3, 3, 0.375), (6, 6, 0.75), (1, 9, 1.125),
                                                                (4, 12, 1.5), (7, 15, 1.875)]


def test_a_checkpoint_without_a_step_resumes_at_the_epoch_boundary():
    assert checkpoint_position({"epoch": 3, "model": {}}) == (3, 0)  # written before checkpoint_every_steps
    state = checkpoint_state(epoch=1, training={"model": {}}, scheduler={}, rng=[], metrics={}, step=5,
                             global_step=13)
    assert checkpoint_position(state) == (1, 5) and state["global_step"] == 13


def test_eval_line_names_the_step_and_the_fractional_epoch():
    line = format_eval_line("s", {"step": 12, "epoch": 1.5, "val_loss": 0.25, "val_accuracy": 0.875})
    assert line == "[s] step 12 (epoch 1.50): val_loss 0.2500  val_accuracy 0.8750"


def test_resume_plan_continues_within_the_epoch_without_repeating_rows(tmp_path):
    recipe = validate_recipe(_raw(checkpoint_every_steps=3, eval_every_steps=4))
    out, storage = tmp_path / "out", tmp_path / "out" / "ray"
    summary = {"recipe": recipe.model_dump(mode="json"), "status": "running", "storage": str(storage), "stages": []}
    (out / "summary.json").parent.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps(summary))
    run = storage / "s-0123abcd"
    state = {"model": {"w": torch.zeros(2)}, "metrics": {"epoch": 1}}
    save_atomic({**state, "epoch": 1}, run / "checkpoint_000001/state.pt")  # an epoch's end
    save_atomic({**state, "epoch": 1, "step": 7, "global_step": 15}, run / "checkpoint_000002/state.pt")
    lines = [{"stage": "s", "event": "eval", "step": 4, "epoch": 0.5, "val_loss": 1.0},
             {"stage": "s", "epoch": 1, "train_loss": 1.0},
             {"stage": "s", "event": "eval", "step": 12, "epoch": 1.5, "val_loss": 0.5},
             {"stage": "s", "event": "eval", "step": 20, "epoch": 2.5, "val_loss": 0.4},  # after the checkpoint
             {"stage": "s", "epoch": 2, "train_loss": 0.5}]
    (out / PROGRESS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    plan = plan_resume(recipe, out)
    assert torch.load(plan.checkpoints["s"], weights_only=True)["step"] == 7
    assert [row["epoch"] for row in plan.histories["s"]] == [1]  # epoch 2 runs again from step 8
    assert [row["step"] for row in plan.evals["s"]] == [4, 12]
    assert plan.resumes[-1] == {"skipped": [], "stage": "s", "from_epoch": 1, "from_step": 7}
