"""Built-in models, user models by path, and the built-in and synthetic datasets (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from rayeffi.data import DatasetInfo, builtin_digits_paths, resolve_source, synthetic_arrays
from rayeffi.errors import UserError
from rayeffi.models import ConvNet, build_model
from rayeffi.recipe import DataConfig, ModelConfig, SyntheticDataConfig

DIGITS = DatasetInfo(num_features=64, num_classes=10, image_shape=(1, 8, 8), num_train=1437, num_val=360)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_builtin_models_map_digits_to_logits(name):
    model = build_model(ModelConfig(name=name), DIGITS)
    assert model(torch.randn(5, 64)).shape == (5, 10)


def test_cnn_shapes_follow_the_image():
    model = ConvNet((3, 12, 10), num_classes=4, channels=(8,))
    assert model(torch.randn(2, 3 * 12 * 10)).shape == (2, 4)


def test_user_model_by_module_path():
    model = build_model(ModelConfig(name="helpers.user_models:tiny", kwargs={"width": 7}), DIGITS)
    assert model[1].out_features == 7 and model(torch.randn(3, 64)).shape == (3, 10)


@pytest.mark.parametrize(
    ("name", "message"),
    [("helpers.user_models:not_a_model", "not a torch.nn.Module"), ("helpers.user_models:nope", "no function 'nope'")],
)
def test_bad_user_models(name, message):
    with pytest.raises(UserError, match=message):
        build_model(ModelConfig(name=name), DIGITS)


def test_builtin_digits_are_the_full_set_split_once(tmp_path):
    train, val = (pq.read_table(path) for path in builtin_digits_paths())
    assert (train.num_rows, val.num_rows) == (1437, 360)
    features = np.stack(train["features"].to_numpy(zero_copy_only=False))
    assert features.shape == (1437, 64) and 0.0 <= features.min() and features.max() <= 1.0
    assert sorted(set(train["label"].to_pylist())) == list(range(10))
    source = resolve_source(DataConfig(), seed=0, cache_dir=tmp_path)
    assert source.info == DIGITS


def test_max_samples_caps_training_rows(tmp_path):
    assert resolve_source(DataConfig(max_samples=100), 0, tmp_path).info.num_train == 100


def test_synthetic_data_is_deterministic_and_learnable_shape(tmp_path):
    config = SyntheticDataConfig(num_samples=300, num_features=12, num_classes=3, num_shards=3)
    a, b = synthetic_arrays(config, 300, 7, "train"), synthetic_arrays(config, 300, 7, "train")
    np.testing.assert_array_equal(a[0], b[0])
    source = resolve_source(DataConfig(dataset="synthetic", synthetic=config), seed=7, cache_dir=tmp_path)
    assert source.info.num_features == 12 and source.info.num_classes == 3
    assert source.info.num_train == 300 and source.info.num_val == 60
    assert len(list((tmp_path).glob("synthetic-*/train/part-*.parquet"))) == 3


def test_parquet_list_column_and_inferred_classes(tmp_path):
    import pyarrow as pa

    table = pa.table({"x": pa.array([[1.0, 2.0, 3.0]] * 10), "y": pa.array([0, 1, 2, 4, 0, 1, 2, 3, 0, 1])})
    pq.write_table(table, tmp_path / "d.parquet")
    config = DataConfig(dataset="parquet", path=str(tmp_path / "d.parquet"), feature_column="x", label_column="y",
                        batch_size=8)
    info = resolve_source(config, 0, tmp_path).info
    assert (info.num_features, info.num_classes, info.num_train, info.num_val) == (3, 5, 8, 2)
