"""Shared fixtures. Ray tests live in tests/ray and share one local Ray per module."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # test helpers (tests/helpers) importable by Ray workers too


@pytest.fixture
def write_recipe(tmp_path):
    """Write YAML text to a recipe file and return its path."""

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
