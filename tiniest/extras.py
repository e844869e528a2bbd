"""Optional dependencies: import them up front, or say in one line which extra brings them.

A command checks its extras before any work, so that a minimal install (``pip install tiniest``,
or a torch.hub environment) ends in ``pip install "tiniest[EXTRA]"`` rather than a traceback.
"""

from __future__ import annotations

import importlib

from tiniest.errors import MissingExtraError

__all__ = ["install_command", "require_extra"]


def install_command(extra: str) -> str:
    return f'pip install "tiniest[{extra}]"'


def require_extra(extra: str, *modules: str, purpose: str) -> None:
    """Import ``modules``, or raise ``MissingExtraError`` saying that ``purpose`` needs ``extra``."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise MissingExtraError(
                f"{purpose} needs the {extra} extra: {install_command(extra)} ({error})", name=error.name
            ) from None
