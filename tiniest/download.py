"""Fetch bytes over HTTP(S) with the standard library, a timeout and an optional progress bar.

The body is held in memory (the artifact is ~400 kB) and only handed back when it is
complete, so an interrupted transfer can never leave a partial file anywhere.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request

__all__ = ["DownloadError", "default_timeout", "fetch"]

_CHUNK = 64 * 1024


class DownloadError(OSError):
    """A URL that did not yield a complete body; ``status`` is the HTTP status if any."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def default_timeout() -> float:
    """Seconds without data before a connection counts as stalled (``TINIEST_TIMEOUT``)."""
    return float(os.environ.get("TINIEST_TIMEOUT", "30"))


def fetch(url: str, *, progress: bool = False, timeout: float | None = None) -> bytes:
    """GET ``url`` following redirects; raise :class:`DownloadError` unless the body is whole."""
    timeout = default_timeout() if timeout is None else timeout
    request = urllib.request.Request(url, headers={"User-Agent": "tiniest"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            total = int(expected) if expected and expected.isdigit() else None
            body = _read_body(response, total, progress, os.path.basename(url))
    except urllib.error.HTTPError as error:
        raise DownloadError(f"HTTP {error.code} {error.reason} from {url}", status=error.code) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"could not download {url}: {reason}") from None
    if total is not None and len(body) != total:
        raise DownloadError(f"incomplete download from {url}: expected {total} bytes, got {len(body)}")
    return body


def _read_body(response: object, total: int | None, progress: bool, label: str) -> bytes:
    chunks: list[bytes] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label)
    try:
        while chunk := response.read(_CHUNK):  # type: ignore[attr-defined]
            chunks.append(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return b"".join(chunks)
