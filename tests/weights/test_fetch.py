"""The one HTTP GET of the github, original and caller-URL sources, against servers that misbehave on 127.0.0.1.

Each server here trickles or loops where a per-read timeout never fires: the overall deadline
(10 x ``TINIEST_TIMEOUT``) must end it, and the reader blocked on the socket must wake at once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest

from tests.loopback import LoopbackServer
from tiniest.errors import DownloadError, RateLimitError
from tiniest.weights.fetch import fetch

TIMEOUT = 0.2  # a silence bound no trickle below ever reaches; the deadline is 10 x this: 2 s


Steps = Callable[[BaseHTTPRequestHandler, Callable[[float], bool]], None]


def _raw(server: LoopbackServer, steps: Steps) -> Callable[[BaseHTTPRequestHandler], None]:
    """A route that writes raw bytes (``steps(handler, wait)``) until the client hangs up or the test ends."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        with contextlib.suppress(OSError):  # the client shut the connection: what the deadline does
            steps(handler, server.stopping.wait)

    return route


def _drip(handler: BaseHTTPRequestHandler, wait: Callable[[float], bool], prefix: bytes, drop: bytes) -> None:
    handler.wfile.write(prefix)
    handler.wfile.flush()
    for _ in range(2000):  # 2000 x 0.05 s: far past the deadline, bounded all the same
        if wait(0.05):
            return
        handler.wfile.write(drop)
        handler.wfile.flush()


def _endless_trailer(handler: BaseHTTPRequestHandler, wait: Callable[[float], bool]) -> None:
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n")
    stop = time.monotonic() + 20  # as fast as the socket takes them, for longer than any deadline here
    while time.monotonic() < stop and not wait(0):
        handler.wfile.write(b"X-Trailer: x\r\n" * 64)


SERVERS = {
    "trickled status line and headers": lambda h, w: _drip(h, w, b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a"),
    "trickled chunk-size line": lambda h, w: _drip(
        h, w, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"0"
    ),
    "trickled body": lambda h, w: _drip(h, w, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"x"),
    "endless chunked trailer": _endless_trailer,
}


@pytest.mark.parametrize("kind", list(SERVERS))
@pytest.mark.slow
def test_a_server_that_never_finishes_is_cut_at_the_deadline(
    kind: str, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINIEST_TIMEOUT", str(TIMEOUT))
    server.routes["/w.safetensors"] = _raw(server, SERVERS[kind])
    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        fetch(f"{server.url}/w.safetensors", max_bytes=10**6)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "took longer than 2 s (10 x TINIEST_TIMEOUT)" in message or "sent more than" in message, message
    assert elapsed < 10 * TIMEOUT + 5, f"{kind}: {elapsed:.1f} s"  # the deadline, and no retry after it


@pytest.mark.parametrize("target", ["ftp://127.0.0.1/w.safetensors", "file:///etc/passwd", "data:,hello"])
def test_a_redirect_off_http_is_refused_by_name(target: str, server: LoopbackServer) -> None:
    server.redirect("/w.safetensors", target)
    with pytest.raises(DownloadError, match=r"redirected to '.*'; expected an http\(s\) URL$") as caught:
        fetch(f"{server.url}/w.safetensors", max_bytes=10**6)
    assert "loop" not in str(caught.value)
    assert server.paths_requested() == ["/w.safetensors"], "asked once: refused, not retried"


def test_a_content_length_that_is_no_number_counts_as_none(server: LoopbackServer) -> None:
    """``"²".isdigit()`` is True, and ``int("²")`` fails: such a length is no length at all."""
    server.serve("/w.safetensors", b"weights", headers={"Content-Length": "\u00b2"})
    server.routes["/w.safetensors"] = _raw(
        server,
        lambda h, w: h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: \xc2\xb2\r\nConnection: close\r\n\r\nweights"),
    )
    assert fetch(f"{server.url}/w.safetensors", max_bytes=10**6) == b"weights"


@pytest.mark.parametrize("reset", ["99999999999999999999", "-5", "1e9", "\u00b2"])
def test_a_rate_limit_with_an_absurd_reset_time_is_still_one_rate_limit_error(
    reset: str, server: LoopbackServer
) -> None:
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
    server.serve("/w.safetensors", b'{"message": "API rate limit exceeded"}', status=403, headers=headers)
    with pytest.raises(RateLimitError, match=r"rate limit exceeded \(API rate limit exceeded\)$"):
        fetch(f"{server.url}/w.safetensors", max_bytes=10**6)


def test_a_rate_limit_body_nested_past_the_parser_is_still_one_line(server: LoopbackServer) -> None:
    headers = {"X-RateLimit-Remaining": "0"}
    server.serve("/w.safetensors", b"[" * 4000, status=403, headers=headers)
    with pytest.raises(RateLimitError, match=r"rate limit exceeded \(\[+\)"):
        fetch(f"{server.url}/w.safetensors", max_bytes=10**6)


def test_a_download_draws_no_progress_bar_where_stderr_is_no_terminal(
    server: LoopbackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log file would get a carriage-return update per chunk (issue 29): tqdm draws on a terminal only."""
    body = bytes(300_000)
    server.serve("/weights.safetensors", body)
    assert fetch(f"{server.url}/weights.safetensors", max_bytes=len(body), progress=True) == body
    assert "\r" not in capsys.readouterr().err
