"""Write the built-in MNIST subset as a folder of PNG files, one subfolder per class.

    python -m rayeffi.data.image_folder runs/mnist_png

gives ``runs/mnist_png/train/<digit>/<n>.png`` and ``runs/mnist_png/val/...``:
torchvision's ImageFolder layout, which ``data.dataset: image_folder`` reads
(``examples/images_folder.yaml``).
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def write_mnist_folder(root: str | Path, max_per_split: int | None = None) -> Path:
    from PIL import Image

    root = Path(root)
    for split in ("train", "val"):
        table = pq.read_table(str(resources.files("rayeffi.data") / f"mnist_{split}.parquet"))
        features = np.stack(table["features"].to_numpy(zero_copy_only=False))[:max_per_split]
        labels = table["label"].to_numpy()[:max_per_split]
        for index, (pixels, label) in enumerate(zip(features, labels)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(np.rint(pixels.reshape(28, 28) * 255).astype(np.uint8), mode="L")
            image.save(folder / f"{index:05d}.png")
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m rayeffi.data.image_folder OUT_DIR")
    print(write_mnist_folder(sys.argv[1]))
