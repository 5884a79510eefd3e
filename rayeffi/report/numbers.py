"""One number format per table column, decided from the column's own values.

A column reads down cleanly when every value has the same shape: ``0.8125`` under
``0.8250``, never ``695.3386`` beside ``1.269e+04``. :func:`column_format` looks at all
of a column's numbers once and returns the one function that writes each of them.
"""

from __future__ import annotations

import math
from typing import Any, Callable

SIGNIFICANT_DIGITS = 4
"""Digits the largest value of a fixed-point column shows (at least)..."""
MIN_SIGNIFICANT_DIGITS = 2
"""...and the smallest nonzero one (``1.5`` beside ``12,690.0``, not ``2``)."""
MAX_DECIMALS = 6
SCIENTIFIC_RANGE = 1e5
"""A column whose largest and smallest nonzero magnitudes differ by this factor or more is
written in scientific notation (fixed point would lose the small ones or pad the large)."""
SCIENTIFIC_ABOVE = 1e9
SCIENTIFIC_BELOW = 1e-4


def column_format(values: list[Any]) -> Callable[[Any], str]:
    """The formatter of a column: integers (``65,536``) when every number is whole; else fixed
    point with one count of decimals (four significant digits of the largest value, two of
    the smallest nonzero one; trailing zeros every value shares dropped); scientific only when the range
    needs it. Missing values are blank; strings and booleans are written as they are."""
    numbers = [float(v) for v in values if _is_number(v) and math.isfinite(v)]
    if all(number.is_integer() for number in numbers) and all(abs(n) < SCIENTIFIC_ABOVE for n in numbers):
        return _formatter("{:,.0f}")
    magnitudes = [abs(n) for n in numbers if n != 0]
    largest, smallest = max(magnitudes), min(magnitudes)
    if largest >= SCIENTIFIC_ABOVE or smallest < SCIENTIFIC_BELOW or largest / smallest >= SCIENTIFIC_RANGE:
        return _formatter("{:.3e}")
    decimals = max(SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(largest)),
                   MIN_SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(smallest)))
    decimals = min(MAX_DECIMALS, max(0, decimals))
    while decimals > 0 and all(f"{n:.{decimals}f}".endswith("0") for n in numbers):
        decimals -= 1  # 0.10 and 0.01, not 0.10000 and 0.01000
    grouping = "," if largest >= 1e4 else ""
    return _formatter("{:" + grouping + "." + str(decimals) + "f}")


def _formatter(spec: str) -> Callable[[Any], str]:
    def write(value: Any) -> str:
        if value is None:
            return ""
        if not _is_number(value) or not math.isfinite(value):
            return str(value)  # a string, a boolean, nan or inf: as it is
        return spec.format(value)

    return write


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
