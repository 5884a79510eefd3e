"""Named model inputs and token sequences for classification.

A Hugging Face model gets the batch's ``attention_mask`` through ``call_model``, so a padded
batch scores exactly as its rows one by one, unpadded; variable-length ``list<int>`` rows under
``classification`` become padded ids, a mask and a class (golden values); bad named inputs are
one ``error:`` line before Ray starts.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the Hugging Face tier needs transformers (the test extra)")

from rayeffi.data.columns import normalise  # noqa: E402
from rayeffi.data.info import DatasetInfo  # noqa: E402
from rayeffi.data.sources import resolve_source, sample_rows  # noqa: E402
from rayeffi.errors import UserError  # noqa: E402
from rayeffi.models import build_model, check_model  # noqa: E402
from rayeffi.models.hf import bert_classifier, gpt2_lm  # noqa: E402
from rayeffi.models.inputs import call_model, check_named_inputs, model_kwargs  # noqa: E402
from rayeffi.parallel import DataParallel  # noqa: E402
from rayeffi.precision import Precision  # noqa: E402
from rayeffi.recipe.sections import DataConfig, ModelConfig, TaskConfig  # noqa: E402
from rayeffi.task import IGNORE_INDEX, LanguageModeling, logits_of  # noqa: E402
from rayeffi.techniques.distill.config import DistillConfig  # noqa: E402
from rayeffi.techniques.distill.technique import Distillation, freeze  # noqa: E402
from rayeffi.worker.build import assemble  # noqa: E402
from rayeffi.worker.step import train_step  # noqa: E402

ROWS = [[3, 1, 4, 1, 5], [9, 2], [6, 5, 3, 5, 8, 9, 7], [2]]
SEQ_LEN, VOCAB = 7, 10


def _padded(rows, width, fill=0):
    ids = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, :len(row)] = torch.tensor(row)
        mask[index, :len(row)] = 1
    return ids, mask


def test_bert_scores_a_padded_batch_as_each_row_alone():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="rayeffi.models.hf:bert_classifier", kwargs={"vocab_size": VOCAB}),
                        DatasetInfo(SEQ_LEN, 3, None, 4, 4, vocab_size=VOCAB)).eval()
    ids, mask = _padded(ROWS, SEQ_LEN)
    with torch.no_grad():
        padded = logits_of(call_model(model, ids, {"input.attention_mask": mask}))
        alone = torch.cat([logits_of(call_model(model, torch.tensor([row]))) for row in ROWS])
        unmasked = logits_of(call_model(model, ids))  # as before: padding attended to
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-5)
    # the mask is what makes them equal (an untrained BERT's logits are small: compare the gaps)
    assert (unmasked - alone).abs().max() > 100 * (padded - alone).abs().max()
    labels = torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(torch.nn.functional.cross_entropy(padded, labels),
                               torch.nn.functional.cross_entropy(alone, labels), rtol=0, atol=1e-5)


def test_gpt2_language_model_loss_over_real_tokens_is_the_same_padded_or_not():
    torch.manual_seed(0)
    model = gpt2_lm(SEQ_LEN, VOCAB, vocab_size=VOCAB).eval()
    task = LanguageModeling()
    ids, mask = _padded(ROWS, SEQ_LEN)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for index, row in enumerate(ROWS):
        labels[index, :len(row) - 1] = torch.tensor(row[1:])
    with torch.no_grad():
        padded = task.loss(logits_of(call_model(model, ids, {"input.attention_mask": mask})), labels)
        sums = sum(task.loss_sum(logits_of(call_model(model, torch.tensor([row]))), labels[i:i + 1, :len(row)])
                   for i, row in enumerate(ROWS) if len(row) > 1)
    torch.testing.assert_close(padded, sums / task.count(labels), rtol=0, atol=1e-5)


def test_a_one_tensor_model_is_called_as_before():
    model = torch.nn.Sequential(torch.nn.Embedding(VOCAB, 4), torch.nn.Flatten(), torch.nn.Linear(4 * SEQ_LEN, 2))
    ids, mask = _padded(ROWS, SEQ_LEN)
    assert model_kwargs(model, ids, {"input.attention_mask": mask}) == {}
    torch.testing.assert_close(call_model(model, ids, {"input.attention_mask": mask}), model(ids))
    bert = bert_classifier(SEQ_LEN, 2, vocab_size=VOCAB)
    assert model_kwargs(bert, ids, {}) == {}  # input_ids is its first parameter: positional, as before
    assert set(model_kwargs(bert, ids, {"input.attention_mask": mask, "input.other": mask})) == {
        "input_ids", "attention_mask"}  # only what the forward takes


def _write(path, **columns):
    pq.write_table(pa.table(columns), path)
    return str(path)


def _sequences(tmp_path, **config):
    path = _write(tmp_path / "seq.parquet", ids=pa.array(ROWS * 10), label=pa.array([0, 1, 2, 1] * 10),
                  segments=pa.array([[1] * len(row) for row in ROWS] * 10), weight=pa.array([0.5] * 40))
    return DataConfig(dataset="parquet", path=path, feature_column="ids", batch_size=4, **config)


def test_variable_length_classification_pads_ids_builds_the_mask_and_keeps_one_label(tmp_path):
    config = _sequences(tmp_path, pad_token_id=0)
    source = resolve_source(config, 0, tmp_path, TaskConfig(name="classification"))
    assert (source.info.num_features, source.info.num_classes, source.info.vocab_size) == (7, 3, 10)
    batch = normalise(pq.read_table(config.path).slice(0, 4), source.columns())
    assert batch["features"].to_pylist() == [[3, 1, 4, 1, 5, 0, 0], [9, 2, 0, 0, 0, 0, 0],
                                             [6, 5, 3, 5, 8, 9, 7], [2, 0, 0, 0, 0, 0, 0]]
    assert batch["input.attention_mask"].to_pylist() == [[1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0],
                                                         [1] * 7, [1, 0, 0, 0, 0, 0, 0]]
    assert batch["label"].to_pylist() == [0, 1, 2, 1]
    assert batch["features"].type == pa.list_(pa.int64(), 7) and batch["label"].type == pa.int64()
    features, labels, named = sample_rows(source)
    assert features.dtype == torch.long and named["input.attention_mask"].tolist()[1] == [1, 1, 0, 0, 0, 0, 0]


def test_seq_len_cuts_rows_and_data_inputs_are_padded_like_the_ids(tmp_path):
    config = _sequences(tmp_path, seq_len=3, inputs={"token_type_ids": "segments", "weights": "weight"})
    source = resolve_source(config, 0, tmp_path, TaskConfig(name="classification"))
    batch = normalise(pq.read_table(config.path).slice(0, 4), source.columns())
    assert batch["features"].to_pylist() == [[3, 1, 4], [9, 2, 0], [6, 5, 3], [2, 0, 0]]
    assert batch["input.attention_mask"].to_pylist() == [[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert batch["input.token_type_ids"].to_pylist() == [[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert batch["input.weights"].to_pylist() == [0.5] * 4


def test_a_fixed_length_int_list_without_seq_len_stays_features(tmp_path):
    path = _write(tmp_path / "fixed.parquet", ids=pa.array([[1, 2, 3]] * 8), label=pa.array([0, 1] * 4))
    source = resolve_source(DataConfig(dataset="parquet", path=path, feature_column="ids", batch_size=4), 0, tmp_path)
    assert source.layout.kind == "rows" and not source.layout.attention_mask


def test_token_type_ids_column_is_picked_up_in_token_data(tmp_path):
    path = _write(tmp_path / "tt.parquet", ids=pa.array(ROWS * 2), label=pa.array([0, 1] * 4),
                  token_type_ids=pa.array([[0] * len(row) for row in ROWS] * 2))
    source = resolve_source(DataConfig(dataset="parquet", path=path, feature_column="ids", batch_size=4), 0, tmp_path)
    assert source.layout.input_columns == ["input.attention_mask", "input.token_type_ids"]


@pytest.mark.parametrize("inputs, expected", [
    ({"token_type_ids": "nope"}, "data.inputs.token_type_ids: data.path"),
    ({"names": "name"}, "data.inputs.names: column 'name' of data.path"),
])
def test_bad_data_inputs_columns_name_the_key(tmp_path, inputs, expected):
    path = _write(tmp_path / "bad.parquet", ids=pa.array(ROWS * 2), label=pa.array([0, 1] * 4),
                  name=pa.array(["a"] * 8))
    with pytest.raises(UserError, match=expected):
        resolve_source(DataConfig(dataset="parquet", path=path, feature_column="ids", batch_size=4, inputs=inputs),
                       0, tmp_path)


def test_token_ids_beyond_the_vocabulary_are_refused(tmp_path):
    config = _sequences(tmp_path, vocab_size=5)
    with pytest.raises(UserError, match=r"token ids in 'ids' range 1..9, outside \[0, 5\)"):
        resolve_source(config, 0, tmp_path, TaskConfig(name="classification"))


def test_an_argument_the_forward_does_not_take_and_a_one_tensor_strategy_are_refused():
    bert = bert_classifier(SEQ_LEN, 2, vocab_size=VOCAB)
    check_named_inputs(bert, "bert", ["token_type_ids"], ["attention_mask", "token_type_ids"])
    with pytest.raises(UserError, match="data.inputs.weights: model bert's forward takes no argument 'weights'"):
        check_named_inputs(bert, "bert", ["weights"], [])
    with pytest.raises(UserError, match="parallel.strategy pipeline: model bert takes named inputs"):
        check_named_inputs(bert, "bert", [], ["attention_mask"], "pipeline")
    mlp = torch.nn.Linear(3, 2)
    check_named_inputs(mlp, "mlp", [], ["attention_mask"], "pipeline")  # a one-tensor model runs there


def test_the_driver_dry_run_passes_the_mask(tmp_path):
    source = resolve_source(_sequences(tmp_path), 0, tmp_path, TaskConfig(name="classification"))
    check_model(ModelConfig(name="rayeffi.models.hf:bert_classifier"), source.info, sample_rows(source))


class _Bag(torch.nn.Module):
    """A one-tensor student: the mean of its tokens' embeddings."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.EmbeddingBag(VOCAB, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.embed(ids))


def test_a_bert_teacher_gets_the_mask_while_a_one_tensor_student_trains():
    torch.manual_seed(0)
    teacher = freeze(bert_classifier(SEQ_LEN, 3, vocab_size=VOCAB))
    technique = Distillation(DistillConfig(teachers=[{"module": teacher}], temperature=2.0, alpha=0.5),
                             [teacher], SEQ_LEN)
    parts = assemble(_Bag(), DataParallel(), Precision(), lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                     techniques=[technique])
    ids, mask = _padded(ROWS, SEQ_LEN)
    extras = {"input.attention_mask": mask}
    with torch.no_grad():
        expected = logits_of(teacher(ids, attention_mask=mask))
    torch.testing.assert_close(technique._teacher_logits(ids, extras), expected, rtol=0, atol=0)
    before = [p.clone() for p in parts.model.parameters()]
    loss = train_step(parts, ids, torch.tensor([0, 1, 2, 1]), extras)
    assert torch.isfinite(loss) and any((p - b).abs().max() > 0 for p, b in zip(parts.model.parameters(), before))
    assert technique.metrics()["kd_soft_loss"] > 0
