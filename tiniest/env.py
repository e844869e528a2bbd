"""tiniest's environment variables, read one way: a bad value is one ``UsageError`` naming the variable.

Every knob is read at the moment it is used (not at import), so a test or a long-lived process can
change it. An empty or blank value counts as unset. Numbers, with their ranges, are read by
``tiniest.env_numbers``.
"""

from __future__ import annotations

import os
from pathlib import Path

from tiniest.errors import UsageError

__all__ = ["env_flag", "env_path", "env_text", "env_yes"]

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


def env_path(name: str) -> Path | None:
    """A path variable (``~`` expanded), or ``None`` when unset."""
    value = env_text(name)
    return Path(value).expanduser() if value is not None else None
