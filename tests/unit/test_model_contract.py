"""The model contract (rayeffi/task.py, rayeffi/models/contract.py): what forward receives and
returns, and the driver's 2-row dry run that turns each breach into one ``error:`` line, exit 2,
before Ray starts."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from rayeffi.cli import main
from rayeffi.models.contract import attach_input_cast, dry_run, wants_token_ids
from rayeffi.task import correct_count, logits_of, task_loss
from helpers.model_families import resnet_bn, tiny_gpt2


def test_logits_of_every_output_form():
    logits = torch.randn(3, 4)

    class Output:  # a ModelOutput-like object
        def __init__(self):
            self.logits = logits

    for outputs in (logits, {"logits": logits, "loss": None}, Output(), (logits, "hidden")):
        assert logits_of(outputs) is logits
    targets = torch.tensor([0, 1, 2])
    assert task_loss({"logits": logits}, targets) == task_loss(logits, targets)
    assert correct_count(Output(), targets) == correct_count(logits, targets)
    with pytest.raises(TypeError, match="'logits' tensor"):
        logits_of("text")


def test_embedding_first_models_get_token_ids():
    model = attach_input_cast(tiny_gpt2(16, 4))
    assert wants_token_ids(model) and not wants_token_ids(nn.Linear(3, 3))
    features = torch.randint(0, 17, (2, 16)).float()  # token ids as the data pipeline carries them
    assert model(features).shape == (2, 4)


def test_dry_run_keeps_batchnorm_statistics():
    model = resnet_bn(64, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dry_run(model, "resnet", torch.randn(2, 64), torch.tensor([0, 1]), 10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


GOOD = "stages: [{name: train, kind: train, epochs: 1}]\n"
MISTAKES = {
    "late_embedding": "set model.input_dtype: int64",
    "wrong_width": r"logits of shape \[2, 11\] for inputs of shape \[2, 64\]; task classification needs \[2, 10\]",
    "blowup": "non-finite logits",
}


@pytest.mark.parametrize("builder", sorted(MISTAKES))
def test_model_mistakes_exit_2_with_one_line_before_ray(builder, tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(GOOD)
    start = time.perf_counter()
    code = main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"),
                 "--set", f"model.name=helpers.user_models:{builder}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: model helpers.user_models:{builder}: ")
    assert __import__("re").search(MISTAKES[builder], err[0]), err[0]
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "out").exists()


def test_the_fix_passes_the_dry_run():
    from rayeffi.data.info import DatasetInfo
    from rayeffi.models import check_model
    from rayeffi.recipe.sections import ModelConfig

    info = DatasetInfo(64, 10, (1, 8, 8), 100, 20)
    rows = (torch.randint(0, 17, (2, 64)).float(), torch.tensor([0, 1]))
    check_model(ModelConfig(name="helpers.user_models:late_embedding", input_dtype="int64"), info, rows)
    check_model(ModelConfig(name="helpers.user_models:dict_output"), info, rows)
    from rayeffi.precision import needs_onednn_off, reduced_precision_autocast

    for dtype in (torch.float16, torch.bfloat16):  # an LSTM under fp16/bf16 on CPU: oneDNN off, it runs
        precision = lambda model: reduced_precision_autocast("cpu", dtype, needs_onednn_off(model, "cpu"))  # noqa
        check_model(ModelConfig(name="helpers.model_families:lstm"), info, rows, precision)
    with pytest.raises(Exception, match="primitive descriptor.*precision: fp32"):  # what oneDNN alone does
        check_model(ModelConfig(name="helpers.model_families:lstm"), info, rows,
                    lambda model: torch.autocast("cpu", dtype=torch.float16))
