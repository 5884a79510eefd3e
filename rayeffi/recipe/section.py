"""The base of every recipe section (pure configuration, pydantic only)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every recipe model: frozen, typed, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
