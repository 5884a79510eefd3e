"""Cutting models into pipeline chunks (no process group) and the pipeline recipe's errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rayeffi.cli import main
from rayeffi.errors import UserError
from rayeffi.models import ConvNet, MLP
from rayeffi.models.transformer import TransformerClassifier
from rayeffi.parallel.pipeline_split import (
    UnitChain,
    balanced_chunk_starts,
    chunks_of_worker,
    measured_costs,
    pipeline_units,
    plan_chunks,
)

PIPE = "parallel: {strategy: pipeline, num_stages: 2, num_microbatches: 4}\n"
STAGES = "stages: [{name: train, kind: train, epochs: 1}]\n"


def _chained(chunks, x):
    for chunk in chunks:
        x = UnitChain(chunk)(x)
    return x


@pytest.mark.parametrize("model", [
    MLP(64, 10, (32, 16)),
    ConvNet((1, 8, 8), 10, (4, 8)),
    TransformerClassifier(64, 10, num_tokens=8, width=16, num_layers=2, num_heads=2),
    nn.Sequential(nn.Linear(64, 8), nn.Sequential(nn.ReLU(), nn.Linear(8, 8)), nn.Linear(8, 10)),
], ids=["mlp", "cnn", "transformer", "nested-sequential"])
def test_chunks_compose_to_the_model_and_keep_its_keys(model):
    torch.manual_seed(0)
    x = torch.randn(5, 64)
    units = pipeline_units(model)
    for num_chunks in (2, 3):
        chunks = plan_chunks(units, num_chunks)
        assert len(chunks) == num_chunks and all(chunks)
        torch.testing.assert_close(_chained(chunks, x), model(x), rtol=0, atol=0)
        keys = [set(UnitChain(chunk).state_dict()) for chunk in chunks]
        assert set().union(*keys) == set(model.state_dict()) and sum(map(len, keys)) == len(model.state_dict())


def test_split_points_by_name_and_by_container():
    units = pipeline_units(ConvNet((1, 8, 8), 10, (4, 8)))
    by_container = plan_chunks(units, 2, ["classifier"])
    assert by_container[1][0][0] == "classifier.0"
    by_layer = plan_chunks(units, 3, ["features.2", "classifier.1"])
    assert [chunk[0][0] for chunk in by_layer] == ["image", "features.2", "classifier.1"]


def test_balanced_split_minimises_the_largest_chunk():
    assert balanced_chunk_starts([1, 1, 1, 1], 2) == [0, 2]
    assert balanced_chunk_starts([10, 1, 1, 1, 1, 1], 2) == [0, 1]
    assert balanced_chunk_starts([1, 2, 3, 4, 5], 3) == [0, 3, 4]  # sums 6, 4, 5
    mlp = pipeline_units(MLP(64, 10, (128, 64)))  # 8320, 8256, 650 weights
    assert [c[0][0] for c in plan_chunks(mlp, 2)] == ["layers.0", "layers.3"]


def test_measured_costs_time_every_layer():
    costs = measured_costs(pipeline_units(MLP(64, 10, (256, 16))), torch.randn(16, 64), repeats=2)
    assert len(costs) == 6 and all(c >= 0 for c in costs) and costs[1] > 0


def test_placement_looped_and_v():
    assert [chunks_of_worker(r, 2, 2, v_shape=False) for r in range(2)] == [[0, 2], [1, 3]]
    assert [chunks_of_worker(r, 2, 2, v_shape=True) for r in range(2)] == [[0, 3], [1, 2]]
    assert [chunks_of_worker(r, 4, 1, v_shape=False) for r in range(4)] == [[0], [1], [2], [3]]


@pytest.mark.parametrize(("points", "message"), [
    (["layers.9"], "no module 'layers.9' in the model; its layers are: layers.0, layers.1"),
    (["nope"], "no module 'nope'"),
])
def test_unknown_split_point_names_the_layers(points, message):
    with pytest.raises(UserError, match=message):
        plan_chunks(pipeline_units(MLP(64, 10, (8,))), 2, points)


def test_split_points_out_of_order_and_too_many_stages():
    units = pipeline_units(MLP(64, 10, (8,)))  # Flatten, Linear, ReLU, Linear: 4 layers
    with pytest.raises(UserError, match="does not come after the previous split point"):
        plan_chunks(units, 3, ["layers.2", "layers.1"])
    with pytest.raises(UserError, match="5 pipeline chunks but the model has only 4 layers"):
        plan_chunks(units, 5)


def test_a_model_without_units_is_a_clear_error():
    class Opaque(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(UserError, match="neither an nn.Sequential nor has a pipeline_units"):
        pipeline_units(Opaque())


@pytest.mark.parametrize(("text", "extra", "expected"), [
    ("model: {name: mlp, hidden_sizes: [8]}\nparallel: {strategy: pipeline, num_stages: 2, num_microbatches: 4, "
     "split_points: [layers.7]}\n",
     [], "no module 'layers.7' in the model"),
    ("model: {name: mlp, hidden_sizes: [8]}\nscaling: {num_workers: 5}\ndata: {batch_size: 50}\n"
     "parallel: {strategy: pipeline, num_stages: 5, num_microbatches: 5}\n", [],
     "5 pipeline chunks but the model has only 4 layers"),
    (PIPE, ["--set", "scaling.num_workers=3"], "scaling.num_workers 3 is not a multiple of parallel.num_stages 2"),
    (PIPE, ["--set", "scaling.num_workers=0"], "scaling.num_workers 0 is not a multiple of parallel.num_stages 2"),
    (PIPE, ["--set", "data.batch_size=30"], "data.batch_size 30 does not split into 1 replica(s) x 4 micro-batches"),
    (PIPE, ["--set", "parallel.num_microbatches=1"], "num_microbatches 1 is below parallel.num_stages 2"),
    (PIPE, ["--set", "parallel.schedule=interleaved_1f1b", "--set", "parallel.stages_per_worker=1"],
     "needs parallel.stages_per_worker >= 2"),
    (PIPE, ["--set", "parallel.split_points=[layers.1,layers.3]"], "split_points has 2 names but 2 chunks"),
    (PIPE, ["--set", "parallel.schedule=pipedream"], "parallel.schedule"),
])
def test_bad_pipeline_recipes_exit_2_naming_the_key(text, extra, expected, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text + STAGES)
    assert main(["run", str(recipe), "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not (tmp_path / "out").exists()


def test_distillation_with_a_pipelined_student_is_rejected_at_load(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "stages:\n  - {name: teacher, kind: train, epochs: 1}\n"
        "  - {name: student, kind: distill, epochs: 1, distill: {teachers: [teacher]}, " + PIPE.strip().replace("\n", "") + "}\n"
    )
    assert main(["run", str(recipe)]) == 2
    assert "does not run kind 'distill'" in capsys.readouterr().err


def test_smoke_keeps_whole_pipelines():
    from rayeffi.recipe.pipeline import PipelineConfig

    config = PipelineConfig(num_stages=4)
    assert config.smoke_num_workers(8, 2) == 4 and PipelineConfig(num_stages=2).smoke_num_workers(8, 2) == 2


def test_a_pipelined_dsd_checkpoint_exports_every_stage():
    from rayeffi.techniques.dsd.export import sparse_phase

    def part(names):
        return {"techniques": {"dsd": {"sparse": {"round": 0, "sparsity": 0.5,
                                                  "model": {n: torch.ones(2) for n in names},
                                                  "masks": {n: torch.ones(2, dtype=torch.bool) for n in names}}}}}

    stage0, stage1 = part(["0.weight", "0.bias"]), part(["2.weight"])
    merged = sparse_phase({**stage0, "pipeline_stages": [stage0, stage1]})
    assert set(merged["model"]) == {"0.weight", "0.bias", "2.weight"} and set(merged["masks"]) == set(merged["model"])
    assert sparse_phase(stage0)["model"].keys() == {"0.weight", "0.bias"}  # data parallel: as before


def test_a_model_with_a_block_list_is_told_what_to_add():
    from helpers.model_families import tiny_gpt2

    with pytest.raises(UserError, match=r"its block list 'h' sits between a stem and a head.*\('h.0', \.\.\.\)"):
        pipeline_units(tiny_gpt2(16, 4))


def test_timing_sample_gives_token_ids_in_range_to_an_embedding():
    from rayeffi.parallel.pipeline_split import timing_sample

    units = [("embed", torch.nn.Embedding(17, 4)), ("head", torch.nn.Linear(4, 2))]
    ids = timing_sample(units, 8, 16)
    assert ids.dtype == torch.int64 and 0 <= ids.min() and ids.max() < 17
    assert timing_sample([("l", torch.nn.Linear(16, 2))], 8, 16).dtype == torch.float32
