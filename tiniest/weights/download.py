"""Fetch bytes over HTTP(S) with the standard library: bounded in time, retried only when retrying can help.

The body is held in memory (the artifact is ~400 kB) and only handed back when it is
complete, so an interrupted transfer can never leave a partial file anywhere.

Limits (environment variables, read at each call):

- ``TINIEST_TIMEOUT`` (default 10 s, as huggingface_hub's): how long a connection may stay silent.
  A server that never says a word in that time (a firewall, a dead proxy) is given up at once, not
  retried: it would be as silent again, and a bounded wait matters more on a network that swallows
  every request. One attempt also ends once it has lasted ten times that, so a server trickling
  bytes cannot hold it forever (not retried either: the same server would be as slow again).
- ``TINIEST_RETRIES`` (default 2): extra attempts after a transient failure (a refused or reset
  connection, one that went silent mid-body, an incomplete body, HTTP 408, 429, 500, 502, 503,
  504). A 404, a 403, a rate limit or wrong bytes are answers, not accidents: never retried.
- ``TINIEST_BACKOFF`` (default 0.5 s): the wait before the first retry, doubled before each next one.
- ``TINIEST_MAX_DOWNLOAD_MB`` (default 64): the most a URL the caller names (``weights="https://..."``)
  may send. Tiniest's weights are 0.4 MB, and 64 MB holds the weights of a Tiniest with 200,000
  classes, while holding that much in memory is harmless anywhere tiniest runs. The pinned
  release and its original checkpoint are bounded by their pinned sizes instead.

Every download is bounded in size: an announced ``Content-Length`` above the bound is refused
before the body is read, and a body without one (or longer than it said) is cut at the bound plus
one byte. So an endless or lying server costs at most the bound in memory, never more.
Each knob is read with :mod:`tiniest.env`: a bad value is one ``UsageError`` naming it.

With ``progress``, each download announces its URL on stderr (as torch.hub does) and shows a
``tqdm`` bar when tqdm is installed; tqdm is optional (torch.hub users do not have it).
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tiniest.env import env_int, env_number
from tiniest.errors import DownloadError, RateLimitError

__all__ = [
    "DEADLINE_FACTOR",
    "TRANSIENT_STATUS",
    "RetryPolicy",
    "default_timeout",
    "fetch",
    "max_download_bytes",
    "with_retries",
]

_CHUNK = 64 * 1024
DEADLINE_FACTOR = 10
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
T = TypeVar("T")


MB = 1024 * 1024


def default_timeout() -> float:
    """Seconds without data before a connection counts as stalled (``TINIEST_TIMEOUT``, at most a day)."""
    return env_number("TINIEST_TIMEOUT", 10.0, low=0.0, high=86400.0, inclusive_low=False)


def max_download_bytes() -> int:
    """The most a caller's URL may send (``TINIEST_MAX_DOWNLOAD_MB``, in MiB; see the module docstring)."""
    return int(env_number("TINIEST_MAX_DOWNLOAD_MB", 64.0, low=0.0, high=65536.0, inclusive_low=False) * MB)


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a transient failure gets, and how long to wait between them."""

    attempts: int = 3
    backoff: float = 0.5

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """``TINIEST_RETRIES`` (retries after the first attempt) and ``TINIEST_BACKOFF`` (first wait, seconds)."""
        retries = env_int("TINIEST_RETRIES", 2, low=0, high=100)
        return cls(attempts=retries + 1, backoff=env_number("TINIEST_BACKOFF", 0.5, low=0.0, high=3600.0))


def with_retries(call: Callable[[], T]) -> T:
    """``call()``, tried again after a transient :class:`DownloadError`, as :meth:`RetryPolicy.from_env` says."""
    policy = RetryPolicy.from_env()
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except DownloadError as error:
            if not error.transient or attempt == policy.attempts:
                if attempt > 1:  # same class (a rate limit stays a RateLimitError), with the count
                    message = f"{error} (after {attempt} attempts)"
                    raise type(error)(message, status=error.status, transient=error.transient) from None
                raise
        time.sleep(policy.backoff * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # the loop returns or raises


def fetch(
    url: str,
    *,
    max_bytes: int,
    progress: bool = False,
    timeout: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """GET ``url`` following redirects, with retries; raise :class:`DownloadError` unless the body is whole.

    A body larger than ``max_bytes`` is refused (from its ``Content-Length`` before it is read, else
    once ``max_bytes + 1`` bytes have come), not retried. ``headers`` go to ``url`` only, never to
    the hosts it redirects to (they may hold a token).
    """
    limit = default_timeout() if timeout is None else timeout
    if progress:
        sys.stderr.write(f'Downloading: "{url}"\n')
    return with_retries(lambda: _fetch_once(url, progress, limit, headers, max_bytes))


def _fetch_once(
    url: str, progress: bool, timeout: float, headers: Mapping[str, str] | None, max_bytes: int
) -> bytes:
    budget = timeout * DEADLINE_FACTOR  # for the whole attempt; checked between reads, each bounded by timeout
    deadline = time.monotonic() + budget
    answered = False  # a silence before any answer is not retried (see the module docstring)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "tiniest"})
        for name, value in (headers or {}).items():
            request.add_unredirected_header(name, value)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answered = True
            expected = response.headers.get("Content-Length")
            total = int(expected) if expected and expected.isdigit() else None
            if total is not None and total > max_bytes:
                raise DownloadError(f"{url} announces {total} bytes (Content-Length); at most {max_bytes} are expected")
            label = os.path.basename(url.split("?", 1)[0])
            body = _read_body(response, total, progress, label, (deadline, budget), max_bytes)
            if len(body) > max_bytes:
                raise DownloadError(f"{url} sent more than the {max_bytes} bytes expected; stopped reading there")
    except urllib.error.HTTPError as error:
        raise _http_error(url, error) from None
    except DownloadError:
        raise
    except (ValueError, http.client.InvalidURL) as error:  # a URL urllib cannot send: asking again would not help
        raise DownloadError(f"cannot download {url}: {error}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        if isinstance(reason, TimeoutError):
            raise DownloadError(f"{url} sent nothing for {timeout:g} s (TINIEST_TIMEOUT)", transient=answered) from None
        raise DownloadError(f"could not download {url}: {reason!s} ({type(reason).__name__})", transient=True) from None
    if total is not None and len(body) != total:
        raise DownloadError(
            f"incomplete download from {url}: expected {total} bytes, got {len(body)} (connection closed early)",
            transient=True,
        )
    return bytes(body)  # (copied only once whole)


def _http_error(url: str, error: urllib.error.HTTPError) -> DownloadError:
    status = error.code
    if 300 <= status < 400:  # urllib gives up on a redirect loop (or on too many redirects) this way
        return DownloadError(f"redirect loop or too many redirects from {url} (last HTTP {status})", status=status)
    try:
        detail = error.read(4096).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        detail = ""
    limit = _rate_limit_note(status, error.headers, detail)
    if limit is not None:
        return RateLimitError(f"HTTP {status} from {url}: {limit}", status=status)
    transient = status in TRANSIENT_STATUS
    return DownloadError(f"HTTP {status} {error.reason} from {url}", status=status, transient=transient)


def _rate_limit_note(status: int, headers: Any, detail: str) -> str | None:
    """GitHub's words and reset time when a 403/429 is a rate limit, else None."""
    if status not in (403, 429):
        return None
    remaining = headers.get("X-RateLimit-Remaining") if headers is not None else None
    if remaining != "0" and "rate limit" not in detail.lower():
        return None
    try:
        message = str(json.loads(detail).get("message", ""))
    except (ValueError, AttributeError):
        message = detail.strip()[:200]
    reset = headers.get("X-RateLimit-Reset", "") if headers is not None else ""
    when = f"; it resets at {time.strftime('%H:%M:%S UTC', time.gmtime(int(reset)))}" if reset.isdigit() else ""
    return f"rate limit exceeded ({message or 'no message'}){when}"


def _read_body(
    response: Any, total: int | None, progress: bool, label: str, limit: tuple[float, float], max_bytes: int
) -> bytearray:
    """The body, or its first ``max_bytes + 1`` bytes: enough to tell that it is too long."""
    deadline, budget = limit
    body = bytearray()  # grows in place: a body cut at the bound costs the bound, not twice it
    left = max_bytes + 1
    bar = _progress_bar(total, label) if progress else None
    try:
        # read1: returns what arrived, so the deadline is checked often
        while left and (chunk := response.read1(min(_CHUNK, left))):
            body += chunk
            left -= len(chunk)
            if bar is not None:
                bar.update(len(chunk))
            if time.monotonic() > deadline:
                got = f"{len(body)} of {total or '?'} bytes"
                raise DownloadError(f"download of {label} too slow: {got} in {budget:g} s")
    finally:
        if bar is not None:
            bar.close()
    return body


def _progress_bar(total: int | None, label: str) -> Any:
    """A tqdm bar, or None where tqdm is not installed (the stderr line of :func:`fetch` is then all)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label)
