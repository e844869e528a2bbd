"""Numeric environment variables (limits, timeouts, ranks): a value out of its range is one UsageError naming it.

Read as ``tiniest.env`` reads text: at the moment of use, blank meaning unset. Apart from
``env``, so that loading weights from disk, which reads no number, imports none of this.
"""

from __future__ import annotations

import math

from tiniest.env import env_text
from tiniest.errors import UsageError

__all__ = ["env_int", "env_number"]


def env_number(name: str, default: float, *, low: float, high: float = math.inf, inclusive_low: bool = True) -> float:
    """A finite number in ``[low, high]`` (``(low, high]`` when not ``inclusive_low``)."""
    value = env_text(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    _check_range(name, value, number, "a number", low, high, inclusive_low)
    return number


def env_int(name: str, default: int, *, low: int, high: int | None = None) -> int:
    """A whole number in ``[low, high]``."""
    value = env_text(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    _check_range(name, value, number, "a whole number", low, math.inf if high is None else high)
    assert number is not None  # (checked above)
    return number


def _check_range(
    name: str, value: str, number: float | None, kind: str, low: float, high: float, inclusive_low: bool = True
) -> None:
    """One ``UsageError`` naming the variable, the range and the text given, unless ``number`` is in range.

    ``number`` is ``None`` (or NaN) where ``value`` did not parse.
    """
    above = number is not None and (number >= low if inclusive_low else number > low)
    if above and number is not None and math.isfinite(number) and number <= high:
        return
    bracket = "[" if inclusive_low else "("
    raise UsageError(f"{name}: expected {kind} in {bracket}{_bound(low)}, {_bound(high)}], got {value!r}")


def _bound(limit: float) -> str:
    if math.isinf(limit):
        return "inf"
    return str(limit) if isinstance(limit, int) else f"{limit:g}"
