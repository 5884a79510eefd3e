"""Read weights as people save them into one state_dict (name -> tensor).

What :func:`read_weights` takes:

- a torch file (``.pt``, ``.pth``, ``.bin``, any name): a plain ``model.state_dict()``, a dict
  holding one under ``state_dict`` or ``model`` (training scripts' checkpoints; a rayeffi
  checkpoint is one), loaded with ``weights_only=True`` (a pickle naming code is refused);
- a ``.safetensors`` file;
- a folder: a Hugging Face ``save_pretrained`` folder (``model.safetensors``,
  ``pytorch_model.bin``, or their sharded ``*.index.json`` with every shard beside it) or a
  rayeffi checkpoint folder (``state.pt``);
- a shard index file (``*.index.json``) itself.

Every way a path fails to be one of these is one :class:`UserError` naming the absolute path.
Paths are taken as given: resolving a recipe's relative paths is the recipe loader's job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rayeffi.checkpoint import CHECKPOINT_FILE, unreadable_reason
from rayeffi.errors import UserError

FOLDER_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", CHECKPOINT_FILE)
"""What a folder of weights holds, in the order they are looked for (Hugging Face's, then rayeffi's)."""
FORMATS = ("a state_dict file (.pt, .pth, .bin), a .safetensors file, a Hugging Face save_pretrained folder "
           "or a rayeffi checkpoint")
STATE_DICT_KEYS = ("state_dict", "model")
"""Where a saved dict holds its model's state_dict (``{"state_dict": ...}``, ``{"model": ...}``)."""


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict stored at ``path`` (a file or folder, see the module's docstring), on the CPU."""
    path = Path(path).absolute()
    if path.is_dir():
        return _read_folder(path)
    if not path.exists():
        raise UserError(f"{path} does not exist: give {FORMATS}")
    if path.name.endswith(".index.json"):
        return _read_sharded(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


def _read_folder(folder: Path) -> dict[str, torch.Tensor]:
    for name in FOLDER_FILES:
        if (folder / name).is_file():
            return read_weights(folder / name)
    kind = "a Hugging Face folder (it has config.json) without its weights" if (folder / "config.json").is_file() \
        else "a folder without weights"
    raise UserError(f"{folder} is {kind}: it holds none of {', '.join(FOLDER_FILES)}; copy the weights file(s) "
                    "into it (save_pretrained writes them), or give the weights file itself")


def _read_sharded(index: Path) -> dict[str, torch.Tensor]:
    """Every shard a Hugging Face ``*.index.json`` lists (its ``weight_map``: name -> shard file)."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{index} is not a readable shard index (JSON with a 'weight_map' of names to shard "
                        "files): give the index save_pretrained wrote, or the folder holding it") from None
    missing = [shard for shard in shards if not (index.parent / shard).is_file()]
    if missing:
        raise UserError(f"{index.parent / missing[0]} does not exist: {index.name} lists {len(shards)} shards and "
                        f"{len(missing)} are missing ({', '.join(missing[:3])}); copy every shard into "
                        f"{index.parent}")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(read_weights(index.parent / shard))
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file  # safetensors holds tensors only: no pickle, no code

    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # SafetensorError, or an OSError of the file system
        raise UserError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]}): give a complete "
                        ".safetensors file, e.g. the model.safetensors save_pretrained wrote") from None


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as exc:  # torch raises several types for a file that is not a torch file
        raise UserError(f"{path} {unreadable_reason(exc, give=FORMATS)}") from None
    return state_dict_of(saved, path)


def state_dict_of(saved: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict in what ``torch.load`` returned: the dict itself, or its ``state_dict`` / ``model`` entry."""
    if isinstance(saved, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(saved.get(key), dict) and _holds_tensors(saved[key]):
                return _tensors(saved[key])
        if _holds_tensors(saved):
            return _tensors(saved)
        what = f"a dict of {', '.join(map(repr, list(saved)[:4]))}{', ...' if len(saved) > 4 else ''}"
    else:
        what = f"a {type(saved).__name__}"
    raise UserError(f"{path} holds no state_dict ({what}, without tensors under 'state_dict' or 'model'): "
                    "save model.state_dict() (torch.save(model.state_dict(), path)), or give " + FORMATS)


def _holds_tensors(mapping: dict) -> bool:
    """A state_dict: string keys, some tensors, nothing nested."""
    values = mapping.values()
    return (all(isinstance(key, str) for key in mapping) and any(isinstance(v, torch.Tensor) for v in values)
            and not any(isinstance(v, dict) for v in values))


def _tensors(mapping: dict) -> dict[str, torch.Tensor]:
    return {key: value for key, value in mapping.items() if isinstance(value, torch.Tensor)}
