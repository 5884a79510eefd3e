"""Images from files: an image folder (one subfolder per class) and a Parquet column of
encoded PNG bytes, decoded on Ray Data's workers; every malformed one exits 2 before Ray."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from rayeffi.cli import main
from rayeffi.data.columns import ColumnLayout, decode_images, normalise
from rayeffi.data.image_folder import write_mnist_folder
from rayeffi.data.sources import resolve_source, sample_rows
from rayeffi.recipe.sections import DataConfig

LOCAL = ("model: {name: cnn, channels: [8, 16]}\noptimizer: {name: adam, lr: 0.003}\n"
         "scaling: {num_workers: 0}\nstages: [{name: s, kind: train, epochs: 2}]\n")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_mnist_folder(tmp_path_factory.mktemp("png"), max_per_split=400)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_png_bytes_decode_to_channels_first_floats():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10  # H=2, W=3, RGB
    decoded = decode_images([_png(rgb)], (3, 2, 3))
    assert decoded.shape == (1, 18)
    np.testing.assert_allclose(decoded[0].reshape(3, 2, 3), rgb.transpose(2, 0, 1) / 255.0, rtol=1e-6)


def test_an_image_folder_reads_classes_from_its_subfolders(folder, tmp_path):
    config = DataConfig(dataset="image_folder", path=str(folder / "train"), val_path=str(folder / "val"))
    source = resolve_source(config, 0, tmp_path)
    assert source.info.image_shape == (1, 28, 28) and source.info.num_classes == 10
    assert (source.info.num_train, source.info.num_val) == (400, 400)
    features, labels, _ = sample_rows(source)
    first = np.asarray(Image.open(source.train_files[0]), dtype=np.float32) / 255
    torch.testing.assert_close(features[0], torch.from_numpy(first.reshape(-1)))
    assert labels[0].item() == int(source.layout.class_names[0])


def test_an_image_folder_trains_a_cnn_in_local_mode(folder, tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(
        f"data: {{dataset: image_folder, path: {folder / 'train'}, val_path: {folder / 'val'}, batch_size: 32}}\n"
        + LOCAL)
    code = main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    history = json.loads((tmp_path / "out" / "summary.json").read_text())["stages"][0]["history"]
    assert history[-1]["val_accuracy"] > 0.5  # 400 digits, 2 epochs: far above chance (0.1)


def _encoded_parquet(folder, path, rows=200):
    files = sorted((folder / "train").rglob("*.png"))[:rows]
    table = pa.table({"png": [f.read_bytes() for f in files], "digit": [int(f.parent.name) for f in files]})
    pq.write_table(table, path)
    return path


def test_a_parquet_column_of_png_bytes_trains_in_local_mode(folder, tmp_path, capsys):
    path = _encoded_parquet(folder, tmp_path / "png.parquet", rows=400)
    (tmp_path / "r.yaml").write_text(
        f"data: {{dataset: parquet, path: {path}, feature_column: png, label_column: digit, batch_size: 32}}\n"
        + LOCAL)
    code = main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["stages"][0]["metrics"]["val_accuracy"] > 0.3


def test_malformed_images_exit_2_with_one_line_before_ray(folder, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray must not start for a malformed input")

    monkeypatch.setattr("rayeffi.driver.run.start_ray", refuse)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(_png(np.zeros((28, 28), np.uint8)))
    broken = tmp_path / "broken"
    for name in ("0", "1"):
        (broken / name).mkdir(parents=True)
        (broken / name / "a.png").write_bytes(_png(np.zeros((28, 28), np.uint8)))
    (broken / "1" / "b.png").write_bytes(b"\x89PNG not really")
    sizes = tmp_path / "sizes"
    for name in ("0", "1"):
        (sizes / name).mkdir(parents=True)
        (sizes / name / "a.png").write_bytes(_png(np.zeros((28, 28), np.uint8)))
    (sizes / "1" / "big.png").write_bytes(_png(np.zeros((32, 32), np.uint8)))
    bad_bytes = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"png": [b"nope"] * 40, "digit": [0, 1] * 20}), bad_bytes)
    cases = {
        "folder without class subfolders": (f"{{dataset: image_folder, path: {flat}}}", "no class subfolders"),
        "undecodable file": (f"{{dataset: image_folder, path: {broken}, batch_size: 2}}", "does not decode"),
        "image of another size": (f"{{dataset: image_folder, path: {sizes}, batch_size: 2}}", "32x32 pixels"),
        "image_shape that does not match": (
            f"{{dataset: image_folder, path: {folder / 'train'}, image_shape: [1, 32, 32]}}", "28x28 pixels"),
        "bytes that are not an image": (
            f"{{dataset: parquet, path: {bad_bytes}, feature_column: png, label_column: digit, batch_size: 8}}",
            "does not decode"),
        "missing folder": (f"{{dataset: image_folder, path: {tmp_path / 'nowhere'}}}",
                           "python -m rayeffi.data.image_folder DIR"),
    }
    failures = []
    for name, (data, expected) in cases.items():
        (tmp_path / "r.yaml").write_text(f"data: {data}\n" + LOCAL)
        code = main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")])
        lines = capsys.readouterr().err.strip().splitlines()
        if code != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or expected not in lines[0]:
            failures.append(f"{name}: exit {code}: {lines}")
    assert not failures, "\n".join(failures)


def test_images_layout_labels_files_by_their_folder():
    layout = ColumnLayout("bytes", None, "images", 4, image_shape=(1, 2, 2), class_names=("cat", "dog"))
    png = _png(np.full((2, 2), 255, np.uint8))
    out = normalise(pa.table({"bytes": [png, png], "path": ["/x/dog/1.png", "/x/cat/2.png"]}), layout)
    assert out["label"].to_pylist() == [1, 0]
    assert out["features"].to_pylist() == [[1.0] * 4] * 2
