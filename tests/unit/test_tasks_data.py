"""Tasks and their data: token columns padded and shifted, the built-in text and MNIST, each
task through a real local-mode run, and every malformed input one ``error:`` line (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rayeffi.cli import main
from rayeffi.data.columns import ColumnLayout, normalise
from rayeffi.data.sources import resolve_source, sample_rows
from rayeffi.data.text import unigram_perplexity
from rayeffi.recipe.sections import DataConfig, TaskConfig
from rayeffi.task import build_task


def _matrix(column):
    return np.stack(column.to_pylist())


def test_tokens_are_padded_at_the_end_and_labels_are_the_next_token():
    batch = pa.table({"ids": pa.array([[5, 6, 7], [1, 2, 3, 4, 5, 6]], type=pa.list_(pa.int64()))})
    out = normalise(batch, ColumnLayout("ids", None, "tokens", width=4, pad_token_id=0, ignore_index=-100))
    assert _matrix(out["features"]).tolist() == [[5, 6, 7, 0], [1, 2, 3, 4]]  # padded; cut to seq_len
    assert _matrix(out["label"]).tolist() == [[6, 7, -100, -100], [2, 3, 4, 5]]  # cut rows keep their next token


def test_explicit_per_token_labels_are_padded_with_ignore_index():
    batch = pa.table({"ids": pa.array([[5, 6], [1, 2, 3]]), "tags": pa.array([[0, 1], [2, 0, 1]])})
    out = normalise(batch, ColumnLayout("ids", "tags", "tokens", width=3, pad_token_id=9, ignore_index=-1))
    assert _matrix(out["features"]).tolist() == [[5, 6, 9], [1, 2, 3]]
    assert _matrix(out["label"]).tolist() == [[0, 1, -1], [2, 0, 1]]


def test_the_builtin_text_is_byte_tokens_with_a_unigram_baseline(tmp_path):
    source = resolve_source(DataConfig(dataset="text", seq_len=32), 0, tmp_path, TaskConfig(name="language_modeling"))
    assert source.info.vocab_size == 256 and source.info.num_features == 32
    assert source.info.num_train > 10_000 and source.info.num_val > 1_000
    features, labels, _ = sample_rows(source)
    assert features.dtype == torch.int64 and labels.dtype == torch.int64
    assert torch.equal(features[0, 1:], labels[0, :-1])  # the labels are the inputs shifted by one
    assert 10 < unigram_perplexity() < 40  # English bytes by frequency alone


def test_builtin_mnist_is_28x28_images(tmp_path):
    source = resolve_source(DataConfig(dataset="mnist"), 0, tmp_path)
    info = source.info
    assert (info.image_shape, info.num_features, info.num_classes) == ((1, 28, 28), 784, 10)
    assert (info.num_train, info.num_val) == (4000, 1000)
    features, labels, _ = sample_rows(source)
    assert features.dtype == torch.float32 and 0 <= features.min() and features.max() <= 1


def _write(path, **columns):
    pq.write_table(pa.table(columns), path)
    return str(path)


def _run(tmp_path, capsys, recipe: str, *sets: str):
    (tmp_path / "r.yaml").write_text(recipe)
    args = ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")]
    for item in sets:
        args += ["--set", item]
    code = main(args)
    return code, capsys.readouterr()


def _tokens(rows=40, vocab=20, low=3, high=12, seed=0):
    """Rows of varying length counting up from a random start (mod the vocabulary): learnable."""
    rng = np.random.default_rng(seed)
    starts, lengths = rng.integers(1, vocab, rows), rng.integers(low, high, rows)
    return pa.array([[(start + i) % (vocab - 1) + 1 for i in range(length)] for start, length in zip(starts, lengths)])


LOCAL = "scaling: {num_workers: 0}\nstages: [{name: s, kind: train, epochs: 2}]\n"


def test_each_task_trains_end_to_end_in_local_mode(tmp_path, capsys):
    rng = np.random.default_rng(0)
    tokens = _tokens(64)
    tags = pa.array([[t % 3 for t in row] for row in tokens.to_pylist()])
    lm = _write(tmp_path / "lm.parquet", ids=tokens)
    tagged = _write(tmp_path / "tags.parquet", ids=tokens, tags=tags)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x @ np.array([[1.0, -1.0], [0.5, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=np.float32)).astype(np.float32)
    regression = _write(tmp_path / "reg.parquet", x=pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 4),
                        y=pa.FixedSizeListArray.from_arrays(pa.array(y.reshape(-1)), 2))
    cases = {
        "language_modeling": (f"data: {{dataset: parquet, path: {lm}, feature_column: ids, batch_size: 16}}\n"
                              "model: {name: lm, d_model: 16, num_layers: 1, num_heads: 2}\n", "val_perplexity"),
        "token_classification": (
            f"data: {{dataset: parquet, path: {tagged}, feature_column: ids, label_column: tags, batch_size: 16}}\n"
            "model: {name: 'helpers.user_models:tagger'}\n", "val_token_accuracy"),
        "regression": (f"data: {{dataset: parquet, path: {regression}, feature_column: x, label_column: y, "
                       "batch_size: 16}\nmodel: {name: mlp, hidden_sizes: [16]}\n", "val_rmse"),
    }
    for task, (recipe, figure) in cases.items():
        out = tmp_path / task
        (tmp_path / "r.yaml").write_text(f"task: {task}\n{recipe}optimizer: {{name: adam, lr: 0.01}}\n{LOCAL}")
        code = main(["run", str(tmp_path / "r.yaml"), "--out", str(out)])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        summary = json.loads((out / "summary.json").read_text())
        history = summary["stages"][0]["history"]
        assert figure in history[-1] and "val_accuracy" not in history[-1]
        assert history[-1]["val_loss"] < history[0]["train_loss"], task  # it learns
        if task != "regression":
            assert history[-1]["tokens_per_s"] > 0


def test_mnist_with_augmentation_trains_a_cnn_in_local_mode(tmp_path, capsys):
    code, captured = _run(tmp_path, capsys, "data: {dataset: mnist, batch_size: 32, max_samples: 512, augment: "
                          "{crop_padding: 2, mean: [0.13], std: [0.31]}}\nmodel: {name: cnn, channels: [8, 16]}\n"
                          "optimizer: {name: adam, lr: 0.003}\n" + LOCAL)
    assert code == 0, captured.err
    history = json.loads((tmp_path / "out" / "summary.json").read_text())["stages"][0]["history"]
    assert history[-1]["val_accuracy"] > 0.5  # 512 augmented digits, 2 epochs: well above chance (0.1)


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray must not start for a malformed input")

    monkeypatch.setattr("rayeffi.driver.run.start_ray", refuse)


def _bad_inputs(tmp_path):
    tokens = _tokens()
    floats = pa.array([[0.5, 1.5]] * 40)
    lm = "task: language_modeling\nmodel: {name: lm, d_model: 16, num_layers: 1, num_heads: 2}\n"
    return {
        "an empty token row under classification": (
            f"data: {{dataset: parquet, path: {_write(tmp_path / 'a.parquet', features=pa.array([[1, 2], []] * 40), label=pa.array([1] * 80))}}}\n",
            "40 rows of 'features' hold no tokens"),
        "a data.inputs argument the forward does not take": (
            "model: {name: 'rayeffi.models.hf:bert_classifier'}\n"
            f"data: {{dataset: parquet, path: {_write(tmp_path / 'k.parquet', features=pa.array([[1, 2], [3]] * 40), label=pa.array([1, 0] * 40), w=pa.array([0.5] * 80))}, inputs: {{weights: w}}}}\n",
            "data.inputs.weights: model rayeffi.models.hf:bert_classifier's forward takes no argument 'weights'"),
        "per-token labels under classification": (
            f"data: {{dataset: parquet, path: {_write(tmp_path / 'b.parquet', features=floats, label=tokens)}}}\n",
            "task: token_classification"),
        "float features under a language model": (
            lm + f"data: {{dataset: parquet, path: {_write(tmp_path / 'c.parquet', features=floats)}}}\n",
            "needs token ids"),
        "float labels under a language model": (
            lm + f"data: {{dataset: parquet, path: {_write(tmp_path / 'd.parquet', features=tokens, label=pa.array([0.5] * 40))}}}\n",
            "'label' is double"),
        "token id beyond vocab_size": (
            lm + f"data: {{dataset: parquet, path: {_write(tmp_path / 'e.parquet', features=tokens)}, vocab_size: 5}}\n",
            "raise data.vocab_size"),
        "sequence longer than seq_len without truncate": (
            lm + f"data: {{dataset: parquet, path: {_write(tmp_path / 'f.parquet', features=tokens)}, seq_len: 4, "
                 "truncate: false}\n", "data.truncate is false"),
        "token classification without labels": (
            "task: token_classification\n"
            f"data: {{dataset: parquet, path: {_write(tmp_path / 'g.parquet', features=tokens)}}}\n",
            "set data.label_column"),
        "tags not one per token": (
            "task: token_classification\n"
            f"data: {{dataset: parquet, path: {_write(tmp_path / 'h.parquet', features=tokens, label=pa.array([[0]] * 40))}}}\n",
            "one label per token"),
        "text under classification": ("data: {dataset: text}\n", "set task: language_modeling"),
        "lm model under classification": ("model: {name: lm}\n", "set task: language_modeling"),
        "regression target not a number": (
            "task: regression\n"
            f"data: {{dataset: parquet, path: {_write(tmp_path / 'i.parquet', features=floats, label=pa.array(['x'] * 40))}}}\n",
            "regression needs a number"),
        "regression NaN target": (
            "task: regression\n"
            f"data: {{dataset: parquet, path: {_write(tmp_path / 'j.parquet', features=floats, label=pa.array([float('nan')] * 40))}}}\n",
            "non-finite targets"),
        "mnist under regression": ("task: regression\ndata: {dataset: mnist}\n", "set task: classification"),
        "intra_layer language model": (
            lm + "data: {dataset: text}\nparallel: {strategy: intra_layer}\n", "task language_modeling"),
        "a model that is not per-token": (
            lm.replace("{name: lm, d_model: 16, num_layers: 1, num_heads: 2}", "{name: mlp}")
            + "data: {dataset: text, seq_len: 8}\n", "starts with an embedding"),
        "unknown task": ("task: translation\n", "task"),
        "augmentation without images": ("data: {dataset: synthetic, augment: {crop_padding: 2}}\n",
                                        "data.augment works on images"),
        "normalisation of the wrong channels": (
            "data: {dataset: mnist, augment: {mean: [0.1, 0.2], std: [1, 1]}}\n", "one mean and std per channel"),
    }


def test_malformed_task_inputs_exit_2_with_one_line_before_ray(tmp_path, capsys, no_ray):
    failures = []
    for name, (recipe, expected) in _bad_inputs(tmp_path).items():
        code, captured = _run(tmp_path, capsys, recipe + "scaling: {num_workers: 2}\n"
                              "stages: [{name: s, kind: train, epochs: 1}]\n")
        lines = captured.err.strip().splitlines()
        if code != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or expected not in lines[0]:
            failures.append(f"{name}: exit {code}: {captured.err.strip()[-300:]}")
    assert not failures, "\n".join(failures)


def test_tasks_build_from_their_config():
    assert build_task(TaskConfig(name="language_modeling")).per_token
    assert build_task(TaskConfig.model_validate("regression")).label_dtype == torch.float32
    assert build_task(None).name == "classification"
