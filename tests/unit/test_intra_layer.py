"""The intra_layer recipe section, its layout rules and its driver-side checks (no Ray, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rayeffi.cli import main
from rayeffi.data.info import DatasetInfo
from rayeffi.errors import UserError
from rayeffi.models import ConvNet, MLP
from rayeffi.parallel import STRATEGIES, IntraLayer
from rayeffi.parallel.halo import SpatialGrid, assemble_tiles, take_tile
from rayeffi.parallel.intra_layer import check_intra_layer_stage, split_builtin_model
from rayeffi.parallel.mesh import RankGroup, mesh_ranks
from rayeffi.parallel.split_layers import ColumnParallelLinear, RowParallelLinear, SpatialConv2d, SpatialRegion
from rayeffi.parallel.split_model import check_spatial, split_chain
from rayeffi.recipe import load_recipe, validate_recipe
from rayeffi.recipe.intra_layer import IntraLayerConfig, squarest_grid
from rayeffi.precision import Precision
from rayeffi.worker.build import assemble

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "intra_layer.yaml"
DIGITS = DatasetInfo(num_features=64, num_classes=10, image_shape=(1, 8, 8), num_train=1437, num_val=360)


def _stage(parallel: dict, **sections):
    raw = {"model": {"name": "cnn"}, "scaling": {"num_workers": 4}, "parallel": {"strategy": "intra_layer", **parallel},
           "stages": [{"name": "train", "kind": "train", "epochs": 1}], **sections}
    return validate_recipe(raw).stages[0]


def test_squarest_grid():
    assert [squarest_grid(n) for n in (1, 2, 3, 4, 6, 8, 9)] == [(1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (2, 4), (3, 3)]


def test_mesh_groups_are_contiguous_model_parallel_blocks():
    model_groups, data_groups = mesh_ranks(8, 4)
    assert model_groups == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert data_groups == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_layout_defaults_and_smoke_workers():
    auto = IntraLayerConfig()
    assert (auto.group_size(4), auto.spatial_grid(4)) == (4, (2, 2))
    assert auto.smoke_num_workers(4, 2) == 2 and auto.spatial_grid(auto.group_size(2)) == (1, 2)
    assert IntraLayerConfig(grid=(2, 2)).smoke_num_workers(4, 2) == 4  # a pinned 2x2 grid keeps its 4 workers
    assert IntraLayerConfig(model_parallel_size=2).smoke_num_workers(8, 2) == 2
    assert IntraLayerConfig(grid=(1, 2)).smoke_num_workers(8, 2) == 2


@pytest.mark.parametrize(("parallel", "message"), [
    ({"conv": "none", "fc": "none"}, "nothing is split"),
    ({"conv": "channels", "grid": [2, 2]}, "parallel.grid only applies to conv 'spatial'"),
    ({"grid": [2, 2], "model_parallel_size": 2}, "has 4 tiles but parallel.model_parallel_size is 2"),
    ({"tiles": 4}, "unknown key 'parallel.tiles'.*allowed here: conv, fc, grid, model_parallel_size"),
])
def test_config_errors_name_the_key(parallel, message):
    with pytest.raises(UserError, match=message):
        _stage(parallel)


@pytest.mark.parametrize(("parallel", "sections", "message"), [
    ({"model_parallel_size": 3}, {}, "does not divide scaling.num_workers 4"),
    ({"grid": [3, 1]}, {"scaling": {"num_workers": 3}, "data": {"batch_size": 48}}, r"8x8 input does not cut into a 3x1 grid"),
    ({"grid": [1, 8]}, {"scaling": {"num_workers": 8}}, r"8x1 tiles do not divide by the pooling stride"),
    ({}, {"model": {"name": "cnn", "dropout": 0.1}}, "needs model.dropout=0"),
    ({}, {"model": {"name": "tests.helpers.user_models:tiny"}}, "built-in models mlp and cnn"),
    ({}, {"precision": "bf16"}, "runs fp32 only"),
])
def test_stage_checks_reject_impossible_layouts(parallel, sections, message):
    with pytest.raises(UserError, match=message):
        check_intra_layer_stage(_stage(parallel, **sections), DIGITS)


def test_spatial_check_states_what_is_supported():
    grid = (2, 2)
    check_spatial(nn.Sequential(nn.Conv2d(1, 2, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2)), (8, 8), grid, "f")
    unsupported = {
        "stride (2, 2)": nn.Conv2d(1, 2, 3, stride=2, padding=1),
        "padding (0, 0)": nn.Conv2d(1, 2, 3),
        "kernel (2, 2)": nn.Conv2d(1, 2, 2, padding=1),
        "dilation (2, 2)": nn.Conv2d(1, 2, 3, padding=2, dilation=2),
        "pooling kernel (3, 3), stride (2, 2)": nn.MaxPool2d(3, stride=2),
        "cannot run on spatial tiles": nn.BatchNorm2d(1),
        "wider than the 2x2 tiles": nn.Conv2d(1, 1, 7, padding=3),
    }
    for message, layer in unsupported.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_spatial(nn.Sequential(layer), (4, 4) if "wider" in message else (8, 8), grid, "f")


def test_bad_intra_layer_stage_exits_2_before_ray(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {name: cnn}\nscaling: {num_workers: 3}\ndata: {batch_size: 48}\nparallel: {strategy: intra_layer, grid: [3, 1]}\n"
        "stages: [{name: train, kind: train, epochs: 1}]\n"
    )
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: parallel.conv spatial: model.features.0 (Conv2d)")
    assert not (tmp_path / "out" / "summary.json").exists()


def test_example_loads_with_four_workers_and_smokes_on_two():
    stage = load_recipe(EXAMPLE).stages[0]
    assert (stage.scaling.num_workers, stage.parallel.strategy, stage.parallel.conv) == (4, "intra_layer", "spatial")
    assert stage.parallel.spatial_grid(stage.parallel.group_size(4)) == (2, 2)
    smoke = load_recipe(EXAMPLE, smoke=True).stages[0]
    assert smoke.scaling.num_workers == 2 and smoke.parallel.spatial_grid(smoke.parallel.group_size(2)) == (1, 2)
    check_intra_layer_stage(stage, DIGITS)
    check_intra_layer_stage(smoke, DIGITS)


def test_split_chain_pairs_columns_with_rows_and_keeps_odd_widths_whole():
    group = RankGroup((0, 1, 2, 3), 1)  # shapes only: no forward, so no process group is needed
    mlp = MLP(64, 10, (128, 64))
    split_chain(mlp.layers, nn.Linear, group)
    kinds = [type(layer).__name__ for layer in mlp.layers]
    assert kinds == ["Flatten", "ColumnParallelLinear", "ReLU", "RowParallelLinear", "ReLU", "Linear"]  # 10 % 4
    assert mlp.layers[1].weight.shape == (32, 64) and mlp.layers[3].weight.shape == (64, 32)
    assert not mlp.layers[1].gather
    three = split_chain(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)),
                        nn.Linear, group)
    assert [type(layer) for layer in three[::2]] == [ColumnParallelLinear, RowParallelLinear, ColumnParallelLinear]
    assert three[4].gather  # the last one gathers: nothing after it takes a split input


def test_split_model_keeps_the_parameter_names_of_the_plain_model():
    torch.manual_seed(0)
    plain = ConvNet((1, 8, 8), 10)
    names = [name for name, _ in plain.named_parameters()]
    split = split_builtin_model(ConvNet((1, 8, 8), 10), IntraLayerConfig(), RankGroup((0, 1, 2, 3), 0))
    assert isinstance(split.features, SpatialRegion) and isinstance(split.features[0], SpatialConv2d)
    assert [name for name, _ in split.named_parameters()] == names


def test_tiles_cut_and_assemble_back():
    images = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)
    for rows, cols in [(2, 2), (1, 4), (4, 3)]:
        tiles = [take_tile(images, SpatialGrid(rows, cols, RankGroup(tuple(range(rows * cols)), i)))
                 for i in range(rows * cols)]
        assert all(tile.shape == (2, 3, 8 // rows, 12 // cols) for tile in tiles)
        assert torch.equal(assemble_tiles(tiles, SpatialGrid(rows, cols, RankGroup.single())), images)


def test_single_process_intra_layer_is_the_plain_model():
    """One worker (local mode): the strategy's split layers on a group of one equal the plain model."""
    assert STRATEGIES["intra_layer"] is IntraLayer
    torch.manual_seed(0)
    plain = ConvNet((1, 8, 8), 10)
    torch.manual_seed(0)
    strategy = IntraLayer(config=IntraLayerConfig(conv="spatial", fc="split"))
    parts = assemble(ConvNet((1, 8, 8), 10), strategy, Precision(), lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    split = parts.model
    inputs = torch.rand(5, 64)
    torch.testing.assert_close(split(inputs), plain(inputs), rtol=0, atol=1e-6)
    assert strategy.training_state(parts)["model"].keys() == plain.state_dict().keys()
