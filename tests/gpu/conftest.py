"""The GPU tier: plain PyTorch on CUDA, no Ray and no pydantic at module level.

Every test here is marked ``gpu`` and skipped, with the reason, on a machine without CUDA;
``scripts/gpu_check.sh`` runs the tier (and the precision benchmark) on a GPU machine.
Tests that need a recipe config (pydantic) import it inside and skip without it.
"""

from __future__ import annotations

import pytest
import torch

NO_CUDA = "no CUDA device: torch.cuda.is_available() is False (run scripts/gpu_check.sh on a GPU machine)"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/gpu/" not in str(item.fspath).replace("\\", "/"):
            continue
        item.add_marker(pytest.mark.gpu)
        if not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason=NO_CUDA))


@pytest.fixture
def cuda() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())
