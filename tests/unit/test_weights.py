"""rayeffi/weights: every format people save weights in reads into a state_dict that loads into the
model (tensors equal, outputs equal), key prefixes on either side, tied weights, and one error
line for each way a file or its keys do not fit."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from rayeffi.data.info import DatasetInfo
from rayeffi.errors import UserError
from rayeffi.models import build_model
from rayeffi.models.hf import bert_classifier, gpt2_lm
from rayeffi.recipe.sections import ModelConfig
from rayeffi.weights import load_weights, match_weights, read_weights, skipped_message

pytest.importorskip("transformers")

DIGITS = DatasetInfo(64, 10, (1, 8, 8), 1437, 360)
TOKENS = torch.randint(0, 17, (3, 8))


def _mlp(seed: int, hidden=(16,)) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(name="mlp", hidden_sizes=hidden), DIGITS)


def _bert(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return bert_classifier(8, 3).eval()


def _assert_same_weights(loaded: torch.nn.Module, source: torch.nn.Module) -> None:
    source_state = source.state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, source_state[name]), name


def _plain(path, state):
    torch.save(state, path)


def _under_state_dict(path, state):
    torch.save({"epoch": 3, "state_dict": state, "optimizer": {"lr": torch.tensor(0.1)}}, path)


def _under_model(path, state):
    torch.save({"model": state, "step": 10}, path)


def _safetensors(path, state):
    save_file({name: value.contiguous() for name, value in state.items()}, path)


def _rayeffi_checkpoint_folder(path, state):
    path.mkdir()
    torch.save({"format": 1, "epoch": 1, "model": state}, path / "state.pt")


FILE_FORMATS = {
    "state_dict.pt": _plain,
    "state_dict.pth": _under_state_dict,
    "pytorch_model.bin": _under_model,
    "weights.safetensors": _safetensors,
    "checkpoint_000001": _rayeffi_checkpoint_folder,
}


@pytest.mark.parametrize("name", sorted(FILE_FORMATS))
def test_every_file_format_round_trips_into_the_model(name, tmp_path):
    trained, fresh = _mlp(1), _mlp(2)
    FILE_FORMATS[name](tmp_path / name, trained.state_dict())
    match = load_weights(fresh, read_weights(tmp_path / name))
    assert match.fits and match.num_filled == len(fresh.state_dict())
    _assert_same_weights(fresh, trained)


@pytest.mark.parametrize("save", [{}, {"safe_serialization": False}, {"max_shard_size": "40KB"},
                                  {"max_shard_size": "40KB", "safe_serialization": False}],
                         ids=["safetensors", "pytorch_model.bin", "sharded safetensors", "sharded bin"])
def test_hugging_face_save_pretrained_folders_load_whole(save, tmp_path):
    trained, fresh = _bert(1), _bert(2)
    trained.save_pretrained(tmp_path / "hf", **save)
    if "max_shard_size" in save:
        assert len([p for p in os.listdir(tmp_path / "hf") if p.startswith(("model-", "pytorch_model-"))]) > 1
    assert load_weights(fresh, read_weights(tmp_path / "hf")).fits
    _assert_same_weights(fresh, trained)
    with torch.no_grad():
        torch.testing.assert_close(fresh(TOKENS).logits, trained(TOKENS).logits, rtol=0, atol=0)


def test_tied_weights_left_out_of_safetensors_are_not_missing(tmp_path):
    torch.manual_seed(1)
    trained = gpt2_lm(8, 17)
    trained.save_pretrained(tmp_path / "gpt2")
    stored = read_weights(tmp_path / "gpt2")
    assert "lm_head.weight" not in stored  # Hugging Face leaves the tied copy out
    torch.manual_seed(2)
    fresh = gpt2_lm(8, 17)
    match = load_weights(fresh, stored)
    assert match.fits and not match.missing
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    torch.testing.assert_close(fresh.lm_head.weight, trained.lm_head.weight, rtol=0, atol=0)


def test_a_wrapper_prefix_is_named_and_then_removed():
    trained, fresh = _mlp(1), _mlp(2)
    state = {f"model.{name}": value for name, value in trained.state_dict().items()}
    with pytest.raises(UserError) as error:
        load_weights(fresh, state, source="weights w.pt")
    message = str(error.value)
    assert message.startswith("weights w.pt do not fit this model: 4 missing (layers.1.weight, layers.1.bias, "
                              "layers.3.weight, ...), 4 unexpected (model.layers.1.weight, ")
    assert message.endswith("every key in the file starts with 'model.': set init_from.prefix: 'model.'")
    assert load_weights(fresh, state, prefix="model.").fits
    _assert_same_weights(fresh, trained)


@pytest.mark.parametrize("wrapper", ["module.", "_orig_mod."])  # DDP's and torch.compile's state_dict keys
def test_ddp_and_compile_prefixes_are_removed_without_asking(wrapper):
    trained, fresh = _mlp(1), _mlp(2)
    state = {f"{wrapper}{name}": value for name, value in trained.state_dict().items()}
    match = load_weights(fresh, state)
    assert match.fits and match.prefix == wrapper and match.side == "file"
    _assert_same_weights(fresh, trained)


def test_the_backbone_of_a_whole_classifier_file_loads_into_the_backbone():
    classifier = _bert(1)
    backbone = _bert(2).bert
    with pytest.raises(UserError, match=r"the file's keys under 'bert.' fit this model: set init_from.prefix: 'bert.'"):
        load_weights(backbone, classifier.state_dict())
    match = load_weights(backbone, classifier.state_dict(), prefix="bert.")
    assert match.fits and match.side == "file" and match.num_left_out == 2  # classifier.weight and .bias
    _assert_same_weights(backbone, classifier.bert)


def test_a_backbone_file_fills_the_models_part_under_the_prefix():
    backbone = _bert(1).bert
    classifier = _bert(2)
    head_before = classifier.classifier.weight.detach().clone()
    with pytest.raises(UserError, match=r"the file fits this model's part under 'bert.': set init_from.prefix: 'bert.'"):
        load_weights(classifier, backbone.state_dict())
    match = load_weights(classifier, backbone.state_dict(), prefix="bert.")
    assert match.fits and match.side == "model" and match.num_expected == len(backbone.state_dict())
    _assert_same_weights(classifier.bert, backbone)
    assert torch.equal(classifier.classifier.weight, head_before)  # outside the prefix: its initial values


def test_a_prefix_neither_side_has_is_said_and_the_fitting_one_suggested():
    trained = _mlp(1)
    with pytest.raises(UserError) as error:
        load_weights(_mlp(2), trained.state_dict(), prefix="encoder.", key="teachers.0")
    message = str(error.value)
    assert "no key of the file or of the model starts with prefix 'encoder.'" in message
    assert message.endswith("the keys fit without a prefix: remove teachers.0.prefix")


def test_mis_shaped_keys_are_listed_with_both_shapes():
    with pytest.raises(UserError) as error:
        load_weights(_mlp(2), _mlp(1, hidden=(32,)).state_dict(), source="weights big.pt")
    assert str(error.value) == (
        "weights big.pt do not fit this model: 3 mis-shaped (layers.1.weight [32, 64] in the file vs [16, 64] in "
        "the model, layers.1.bias [32] in the file vs [16] in the model, layers.3.weight [10, 32] in the file vs "
        "[10, 16] in the model); start from weights of this model, or set the model's keys to the ones they were "
        "saved from, or set init_from.strict: false to load what fits")


def test_strict_false_loads_what_fits_and_says_what_it_skipped():
    trained = _bert(1)
    torch.manual_seed(2)
    five_classes = bert_classifier(8, 5)
    head_before = five_classes.classifier.weight.detach().clone()
    state = {**trained.state_dict(), "extra.weight": torch.zeros(2)}
    with pytest.raises(UserError, match="2 mis-shaped"):
        load_weights(five_classes, state)
    match = load_weights(five_classes, state, strict=False)
    _assert_same_weights(five_classes.bert, trained.bert)
    assert torch.equal(five_classes.classifier.weight, head_before)
    assert skipped_message(match, "weights t.pt") == (
        "loaded 39 of the model's 41 tensors from weights t.pt (strict: false); skipped 1 unexpected "
        "(extra.weight), 2 mis-shaped (classifier.weight [3, 32] in the file vs [5, 32] in the model, "
        "classifier.bias [3] in the file vs [5] in the model); the model's skipped tensors keep their initial values")


def test_strict_false_still_fails_when_nothing_fits():
    with pytest.raises(UserError, match="do not fit this model: 4 missing"):
        load_weights(_mlp(2), {"other.weight": torch.zeros(3)}, strict=False)


def test_match_weights_changes_nothing():
    fresh = _mlp(2)
    before = {name: value.clone() for name, value in fresh.state_dict().items()}
    assert match_weights(_mlp(1).state_dict(), fresh).fits
    assert all(torch.equal(fresh.state_dict()[name], value) for name, value in before.items())


# -- files that are not weights: one UserError naming the absolute path -------------------------------------------

def test_a_missing_file_names_the_absolute_path_it_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as error:
        read_weights("weights/pretrained.pt")
    assert str(error.value).startswith(f"{tmp_path / 'weights' / 'pretrained.pt'} does not exist: give a state_dict")


def test_a_hugging_face_folder_without_weights(tmp_path):
    _bert(1).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"hf is a Hugging Face folder \(it has config.json\) without its weights: "
                                        "it holds none of model.safetensors, model.safetensors.index.json"):
        read_weights(tmp_path / "hf")


def test_a_missing_shard_is_named(tmp_path):
    _bert(1).save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / "hf" / shard).unlink()
    with pytest.raises(UserError) as error:
        read_weights(tmp_path / "hf")
    assert str(error.value).startswith(f"{tmp_path / 'hf' / shard} does not exist: model.safetensors.index.json "
                                       "lists ")
    assert "copy every shard into" in str(error.value)


def test_a_broken_shard_index(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(UserError, match="model.safetensors.index.json is not a readable shard index"):
        read_weights(tmp_path)


def test_an_unreadable_safetensors_file(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(os.urandom(64))
    with pytest.raises(UserError, match=r"w.safetensors is not a readable safetensors file \("):
        read_weights(tmp_path / "w.safetensors")


def test_a_pickled_module_is_refused_not_run(tmp_path):
    torch.save(_mlp(1), tmp_path / "whole_model.pt")  # the module object, not its state_dict
    with pytest.raises(UserError, match="holds pickled Python objects .* which rayeffi refuses to load .* re-save "
                                        "only its state_dict"):
        read_weights(tmp_path / "whole_model.pt")


def test_a_torch_file_without_a_state_dict(tmp_path):
    torch.save({"epoch": 3, "notes": "no weights"}, tmp_path / "meta.pt")
    with pytest.raises(UserError, match=r"meta.pt holds no state_dict \(a dict of 'epoch', 'notes', without tensors "
                                        r"under 'state_dict' or 'model'\): save model.state_dict\(\)"):
        read_weights(tmp_path / "meta.pt")
