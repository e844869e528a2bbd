"""tiniest's environment variables, read one way: a bad value is one ``UsageError`` naming the variable.

Every knob is read at the moment it is used (not at import), so a test or a long-lived process can
change it. An empty or blank value counts as unset.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from tiniest.errors import UsageError

__all__ = ["env_flag", "env_int", "env_number", "env_path", "env_text", "env_yes"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def env_text(name: str) -> str | None:
    """The variable's value without surrounding blanks, or ``None`` when it is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def env_flag(name: str, default: bool = False) -> bool:
    """A yes/no variable: ``1/true/yes/on`` or ``0/false/no/off`` (any case)."""
    value = env_text(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise UsageError(f"{name}: expected 1/true/yes/on or 0/false/no/off, got {value!r}")


def env_yes(name: str) -> bool:
    """Whether a variable of another library says yes, read as that library reads it: any other value is no.

    huggingface_hub reads ``HF_HUB_OFFLINE`` this way; refusing a value it accepts would break a
    setup that works with it.
    """
    return (env_text(name) or "").lower() in _TRUE


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


def env_path(name: str) -> Path | None:
    """A path variable (``~`` expanded), or ``None`` when unset."""
    value = env_text(name)
    return Path(value).expanduser() if value is not None else None
