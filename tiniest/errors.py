"""Every error and warning tiniest raises on purpose, in one place.

Each error derives from ``TiniestError`` and keeps the standard exception a caller would
catch without knowing tiniest (``ValueError`` for bad input, ``OSError`` for a failed download...).
The command line prints a ``TiniestError`` as one line, and so an ``OSError`` (a file it
cannot read or write, a full disk): the message names the path; anything else is a bug and keeps
its traceback. Warnings derive from ``TiniestWarning`` the same way, and ``warn`` raises
them at the caller's line, however deep inside tiniest they arise.
"""

from __future__ import annotations

import sys
import warnings

__all__ = [
    "ArtifactError",
    "CacheWarning",
    "DatasetError",
    "DownloadError",
    "FastPathWarning",
    "IncompatibleWeightsError",
    "MissingExtraError",
    "PeerLostError",
    "PreprocessError",
    "RateLimitError",
    "TiniestError",
    "TiniestWarning",
    "UnsupportedTorchError",
    "UnverifiedWeightsWarning",
    "UsageError",
    "WeightsNotFoundError",
    "first_line",
    "warn",
]


class TiniestError(Exception):
    """The base of every error tiniest raises on purpose; its message says what was expected and what came."""


class TiniestWarning(UserWarning):
    """The base of tiniest's own warnings."""


class UsageError(TiniestError, ValueError):
    """An argument, option or environment variable tiniest cannot use as given."""


class ArtifactError(TiniestError, ValueError):
    """Bytes that are neither a safetensors file nor a plain torch state_dict (nor, where one is
    expected, a training checkpoint), or a weights folder's config that is not JSON."""


class IncompatibleWeightsError(TiniestError, ValueError, RuntimeError):
    """Weights that do not fit: tensors that are not the model's, or class names and config that disagree with them.

    A ``RuntimeError`` as ``load_state_dict`` raises, and a ``ValueError`` as for any bad input.
    """


class DatasetError(TiniestError, ValueError):
    """A dataset that is missing or not in a known layout; the message says which was expected."""


class PreprocessError(TiniestError, ValueError):
    """An input that cannot be turned into the model's input; the message says what was expected."""


class MissingExtraError(TiniestError, ImportError, RuntimeError):
    """An optional dependency is missing; the message names the extra that brings it."""


class UnsupportedTorchError(TiniestError, ImportError):
    """The installed torch is older than the oldest tiniest is tested with; ``import tiniest`` says so in one line."""


class DownloadError(TiniestError, OSError):
    """A URL that did not yield a complete body; ``status`` is the HTTP status if any.

    ``transient`` says whether the same request may succeed if simply tried again.
    """

    def __init__(self, message: str, *, status: int | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


class RateLimitError(DownloadError):
    """The server refused because of a rate limit (GitHub answers 403 or 429 with a message)."""


class WeightsNotFoundError(TiniestError, RuntimeError):
    """Every source was tried and none gave the pinned weights."""


class PeerLostError(TiniestError, RuntimeError):
    """A process of a multi-process training run stopped answering or failed."""


class UnverifiedWeightsWarning(TiniestWarning):
    """Weights the caller chose that are not the pinned release."""


class CacheWarning(TiniestWarning, RuntimeWarning):
    """A cache (weights, dataset, compiled package or their locks) that cannot be used: the work goes on without it."""


class FastPathWarning(TiniestWarning, RuntimeWarning):
    """``tiniest.optimize`` runs its module uncompiled where the compiled package was wanted."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """``Type: first line of its message`` (at most ``limit`` characters of it), or ``Type`` alone.

    How a library's exception is told inside one of tiniest's one-line errors, whatever its message holds.
    """
    lines = str(error).strip().splitlines()
    name = type(error).__name__
    return f"{name}: {lines[0][:limit]}" if lines else name


# Modules whose frames stand between the user and a warning: tiniest, the torch.hub entry points
# (``hubconf``, imported by ``torch.hub``) and the context managers tiniest enters.
_PASSED_THROUGH = frozenset({"tiniest", "hubconf", "torch.hub", "contextlib"})


def warn(message: str, category: type[TiniestWarning]) -> None:
    """``warnings.warn`` attributed to the first frame outside tiniest: the user's line, wherever it is raised.

    A fixed ``stacklevel`` is right from one call depth only (Python 3.12's ``skip_file_prefixes``
    does this walk by file). The frames of ``torch.hub`` and ``hubconf`` are passed over too, so that
    ``torch.hub.load`` names its caller, and those of ``contextlib``, for a warning raised on entering
    a ``with``.
    """
    frame = sys._getframe(1)
    level = 2  # 1 is this function
    while frame.f_back is not None and _passed_through(frame.f_globals.get("__name__", "")):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


def _passed_through(module: str) -> bool:
    return module in _PASSED_THROUGH or module.startswith("tiniest.")
