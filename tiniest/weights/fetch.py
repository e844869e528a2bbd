"""One HTTP(S) GET, bounded in time and size: what ``torch.hub.download_url_to_file`` leaves to the caller.

The standard library does the HTTP (proxies from the environment included). This adds:

- a silence bound, ``TINIEST_TIMEOUT`` (default 10 s, as huggingface_hub's), on every socket wait;
- an overall deadline of ten times that for one attempt, kept by a watchdog that shuts the socket
  down: trickled headers, an endless chunked trailer or a trickled body all end there, and the
  reader blocked on the socket wakes at once;
- a size bound before the body (an announced ``Content-Length`` over it is refused unread) and
  during it (the body is cut at the bound plus one byte);
- redirects to http(s) only (never ``ftp:``, ``file:`` or ``data:``), and headers such as a token
  sent to the first host only;
- transient failures (a reset, a short body, HTTP 408/429/5xx) tried three times in all; answers
  (404, 403, rate limits) and silence are not retried: the caller's next source is the retry.

The body is returned in memory, whole or not at all (the weights are 0.4 MB): the caller checks its
sha256 before anything is written, so no cache ever holds an unverified file.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from tiniest.env_numbers import env_number
from tiniest.errors import DownloadError, RateLimitError

__all__ = ["DEADLINE_FACTOR", "default_timeout", "fetch", "max_download_bytes"]

DEADLINE_FACTOR = 10
ATTEMPTS = 3
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MB = 2**20
_CHUNK = 64 * 1024


def default_timeout() -> float:
    """Seconds a connection may stay silent (``TINIEST_TIMEOUT``, at most a day)."""
    return env_number("TINIEST_TIMEOUT", 10.0, low=0.0, high=86400.0, inclusive_low=False)


def max_download_bytes() -> int:
    """The most a file the caller names may hold (``TINIEST_MAX_DOWNLOAD_MB``, 0.001 to 65536 MiB; default 64)."""
    return int(env_number("TINIEST_MAX_DOWNLOAD_MB", 64.0, low=0.001, high=65536.0) * MB)


class _Watchdog:
    """Shuts down every socket opened for one attempt once its deadline passes."""

    def __init__(self, seconds: float) -> None:
        self.sockets: list[socket.socket] = []
        self.fired = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self.sockets.append(sock)
            if self.fired:
                _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self.sockets:
                _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


def _opener(watchdog: _Watchdog) -> urllib.request.OpenerDirector:
    """urllib's opener, with connections that report their sockets to ``watchdog`` and http(s) redirects only."""

    class Watched(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            watchdog.watch(self.sock)

    class WatchedTLS(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            watchdog.watch(self.sock)

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Watched, req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(WatchedTLS, req)

    return urllib.request.build_opener(HTTP, HTTPS, _HttpOnlyRedirects)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects followed to http(s) URLs only, refused by name otherwise (urllib would follow ``ftp:``)."""

    def http_error_302(self, req: Any, fp: Any, code: int, msg: str, headers: Any) -> Any:
        location = headers.get("Location") or headers.get("URI") or ""
        target = urllib.parse.urljoin(req.full_url, location)
        if urllib.parse.urlsplit(target).scheme.lower() not in ("http", "https"):
            raise DownloadError(f"{req.full_url} redirected to {target[:200]!r}; expected an http(s) URL")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def fetch(url: str, *, max_bytes: int, progress: bool = False, headers: Mapping[str, str] | None = None) -> bytes:
    """GET ``url``: the whole body, at most ``max_bytes``, or a ``DownloadError`` saying why not."""
    if progress:
        sys.stderr.write(f'Downloading: "{url}"\n')
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _fetch_once(url, max_bytes, progress, headers or {})
        except DownloadError as error:
            if not error.transient or attempt == ATTEMPTS:
                raise type(error)(
                    f"{error} (after {attempt} attempts)" if attempt > 1 else str(error),
                    status=error.status,
                    transient=error.transient,
                ) from None
        time.sleep(0.5 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _fetch_once(url: str, max_bytes: int, progress: bool, headers: Mapping[str, str]) -> bytes:
    timeout = default_timeout()
    budget = timeout * DEADLINE_FACTOR
    watchdog = _Watchdog(budget)
    answered = False
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "tiniest"})
        for name, value in headers.items():
            request.add_unredirected_header(name, value)  # never sent on to a redirect's host
        with _opener(watchdog).open(request, timeout=timeout) as response:
            answered = True
            total = _content_length(response.headers.get("Content-Length"))
            if total is not None and total > max_bytes:
                raise DownloadError(f"{url} announces {total:,} bytes (Content-Length); at most {max_bytes:,} expected")
            body = _read_body(response, total, max_bytes, url if progress else None)
    except urllib.error.HTTPError as error:
        raise _http_error(url, error) from None
    except DownloadError:
        raise
    except (ValueError, http.client.InvalidURL) as error:  # a URL urllib cannot send
        raise DownloadError(f"cannot download {url}: {error}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        if watchdog.fired:
            raise DownloadError(f"download of {url} took longer than {budget:g} s (10 x TINIEST_TIMEOUT)") from None
        reason = getattr(error, "reason", None) or error
        if isinstance(reason, TimeoutError):
            raise DownloadError(f"{url} sent nothing for {timeout:g} s (TINIEST_TIMEOUT)", transient=answered) from None
        raise DownloadError(f"could not download {url}: {reason!s} ({type(reason).__name__})", transient=True) from None
    finally:
        watchdog.cancel()
    if watchdog.fired:  # the body ended because the socket was shut, not because the server finished
        raise DownloadError(f"download of {url} took longer than {budget:g} s (10 x TINIEST_TIMEOUT)")
    if len(body) > max_bytes:
        raise DownloadError(f"{url} sent more than the {max_bytes:,} bytes expected; stopped reading there")
    if total is not None and len(body) != total:
        raise DownloadError(
            f"incomplete download from {url}: expected {total:,} bytes, got {len(body):,}", transient=True
        )
    return bytes(body)


def _content_length(value: str | None) -> int | None:
    """An announced length of ASCII digits; anything else (``²``, ``-1``, ``1e9``) counts as none announced."""
    value = (value or "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def _read_body(response: Any, total: int | None, max_bytes: int, label: str | None) -> bytearray:
    """The body, or its first ``max_bytes + 1`` bytes: enough to tell it is too long."""
    body = bytearray()
    bar = _progress_bar(total, os.path.basename(urllib.parse.urlsplit(label).path)) if label else None
    try:
        while len(body) <= max_bytes and (chunk := response.read1(min(_CHUNK, max_bytes + 1 - len(body)))):
            body += chunk
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return body


def _http_error(url: str, error: urllib.error.HTTPError) -> DownloadError:
    status = error.code
    if 300 <= status < 400:  # urllib's own refusal: a loop, too many redirects
        return DownloadError(f"redirect loop or too many redirects from {url} (last HTTP {status})", status=status)
    try:
        detail = error.read(4096).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        detail = ""
    note = _rate_limit_note(status, error.headers, detail)
    if note is not None:
        return RateLimitError(f"HTTP {status} from {url}: {note}", status=status)
    return DownloadError(
        f"HTTP {status} {error.reason} from {url}", status=status, transient=status in TRANSIENT_STATUS
    )


def _rate_limit_note(status: int, headers: Any, detail: str) -> str | None:
    """GitHub's message and reset time when a 403/429 is a rate limit, else None."""
    remaining = headers.get("X-RateLimit-Remaining") if headers is not None else None
    if status not in (403, 429) or (remaining != "0" and "rate limit" not in detail.lower()):
        return None
    try:
        message = str(json.loads(detail).get("message", ""))
    except (ValueError, AttributeError, RecursionError):
        message = detail.strip()[:200]
    reset = (headers.get("X-RateLimit-Reset", "") if headers is not None else "").strip()
    when = ""
    if reset.isascii() and reset.isdigit() and len(reset) <= 11:  # a Unix time; a larger one is no time at all
        try:
            when = f"; it resets at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(int(reset)))}"
        except (OverflowError, ValueError, OSError):
            when = ""
    return f"rate limit exceeded ({message[:200] or 'no message'}){when}"


def _progress_bar(total: int | None, label: str) -> Any:
    """A tqdm bar, or None where tqdm is not installed (torch.hub users have torch alone)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    # disable=None: none on a stderr that is no terminal (a log file), which would get a line per update
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=None)
