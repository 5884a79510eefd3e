"""Lazy package namespaces: a name is imported from its module the first time it is used, so
importing a package pulls in nothing heavy (the GPU tier runs without Ray or pydantic)."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_getattr(package: str, table: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving ``table`` (name -> module), caching each name in ``namespace``."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name]), name)
        namespace[name] = value  # the next access skips this function
        return value

    return __getattr__
