"""Faults a download can meet, served for real on 127.0.0.1 by a :class:`LoopbackServer` route.

``FaultyRoute`` answers one path with a fault (for every request, or for the first ``times``
GET requests) and the good reply once healed; ``install_healing`` adds a ``/_heal`` path that
heals every faulty route of a server, so a test running in a subprocess can fix "the network"
between two loads. ``bad_files`` lists anything in a folder that is not a verified file (the
release, or the publisher's original checkpoint), a lock file or a harmless marker: the check
that nothing partial or unverified was left behind.
Every wait is bounded by ``MAX_WAIT`` and ends when the server stops.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.loopback import LoopbackServer

__all__ = [
    "FAULTS",
    "PERMANENT",
    "TRANSIENT",
    "FaultyRoute",
    "bad_files",
    "hub_headers",
    "install_healing",
    "silent_endpoint",
]

MAX_WAIT = 30.0  # no handler thread ever waits longer than this
TRICKLE_SECONDS = 7.5  # how long a trickled body takes in all; tests use TINIEST_TIMEOUT=0.5 (deadline 5 s)

# TRANSIENT faults are retried; the others are not (a server silent from the start would be silent again)
TRANSIENT = ("http-500", "http-503", "reset-mid-body", "short-body", "stall-mid-body")
PERMANENT = (
    "http-404",
    "rate-limit-403",
    "wrong-bytes",
    "corrupt-bytes",
    "html-200",
    "redirect-loop",
    "trickle",
    "stall",
)
FAULTS = TRANSIENT + PERMANENT
BODY_FAULTS = frozenset({"reset-mid-body", "short-body", "stall-mid-body", "trickle"})  # HEAD is answered normally

HTML_PAGE = b"<!DOCTYPE html><html><head><title>Sign in to the Wi-Fi</title></head><body>Please log in</body></html>"
RATE_LIMIT_BODY = json.dumps(
    {
        "message": "API rate limit exceeded for 127.0.0.1. (But here's the good news: Authenticated requests get a "
        "higher rate limit. Check out the documentation for more details.)",
        "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting",
    }
).encode()


def hub_headers(body: bytes, repo_id: str = "tiniest-models/tiniest-cifar10") -> dict[str, str]:
    """The headers huggingface_hub needs on a ``resolve`` answer (as in ``serve_like_the_hub``)."""
    return {
        "X-Repo-Commit": hashlib.sha1(repo_id.encode()).hexdigest(),
        "ETag": f'"{hashlib.sha256(body).hexdigest()}"',
    }


def corrupted(body: bytes) -> bytes:
    """Same length, last bytes changed: what a broken proxy or a bit flip would give."""
    return body[:-16] + bytes(16)


class FaultyRoute:
    """A route answering with ``fault`` (for the first ``times`` GETs, or always) and else with ``body``.

    ``extra_headers`` go with every answer that carries the file (e.g. the Hub's headers).
    ``loop_to`` is the path a redirect loop sends the client back to.
    """

    def __init__(
        self,
        server: LoopbackServer,
        path: str,
        fault: str,
        body: bytes,
        *,
        times: int | None = None,
        extra_headers: dict[str, str] | None = None,
        loop_to: str | None = None,
    ) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        self.server, self.path, self.fault, self.body = server, path, fault, body
        self.times = times
        self.extra_headers = dict(extra_headers or {})
        self.loop_to = loop_to or path
        self.gets = 0
        self.faulted: list[str] = []  # the method of each request answered with the fault
        self.get_times: list[float] = []  # time.monotonic() of each GET received
        self.healed = False
        self.half_sent = threading.Event()  # set once a body fault has sent its first half
        server.routes[path] = self

    def heal(self) -> None:
        self.healed = True

    def _active(self, handler: BaseHTTPRequestHandler) -> bool:
        if self.healed:
            return False
        if handler.command == "GET":
            self.gets += 1
            self.get_times.append(time.monotonic())
            return self.times is None or self.gets <= self.times
        return self.times is None

    def __call__(self, handler: BaseHTTPRequestHandler) -> None:
        if not self._active(handler):
            self._send(handler, 200, self.body, self.extra_headers)
            return
        fault, head = self.fault, handler.command == "HEAD"
        if not (head and fault in BODY_FAULTS):
            self.faulted.append(handler.command)
        if fault.startswith("http-"):
            self._send(handler, int(fault[5:]), f"{fault[5:]} error page".encode(), {"Content-Type": "text/plain"})
        elif fault == "rate-limit-403":
            reset = str(int(time.time()) + 3600)
            headers = {"Content-Type": "application/json", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
            self._send(handler, 403, RATE_LIMIT_BODY, headers)
        elif fault in ("wrong-bytes", "corrupt-bytes"):
            wrong = corrupted(self.body)
            headers = dict(self.extra_headers)
            # wrong-bytes: a Hub (or mirror) that serves other bytes names them by their own hash;
            # corrupt-bytes: a proxy that damages the body in passing keeps the real file's ETag
            if fault == "wrong-bytes" and "ETag" in headers:
                headers["ETag"] = hub_headers(wrong)["ETag"]
            self._send(handler, 200, wrong, headers)
        elif fault == "html-200":
            self._send(handler, 200, HTML_PAGE, {"Content-Type": "text/html; charset=utf-8"})
        elif fault == "redirect-loop":
            target = self.path + "/loop" if self.loop_to == self.path else self.loop_to
            if target not in self.server.routes:
                self.server.redirect(target, self.server.url + self.path)
            self._send(handler, 302, b"", {"Location": self.server.url + target})
        elif fault == "stall":
            self._wait(MAX_WAIT)  # say nothing at all, not even a status line
            handler.close_connection = True
        elif head:  # body faults: the metadata request is answered normally
            self._send(handler, 200, self.body, self.extra_headers)
        else:
            self._body_fault(handler)

    def _body_fault(self, handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        self._send_headers(handler, 200, len(self.body), self.extra_headers)
        half = self.body[: len(self.body) // 2]
        try:
            if self.fault == "trickle":
                self._trickle(handler)
                return
            handler.wfile.write(half)
            handler.wfile.flush()
            self.half_sent.set()
            if self.fault == "reset-mid-body":  # RST instead of FIN: the client sees "connection reset"
                handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                handler.connection.close()
            elif self.fault == "stall-mid-body":
                self._wait(MAX_WAIT)
            # short-body: return, the server closes the connection after half of Content-Length
        except OSError:  # the client gave up first
            pass

    def _trickle(self, handler: BaseHTTPRequestHandler) -> None:
        """Send the whole body in small pieces, each soon enough to beat a per-read timeout."""
        pieces = 75
        size = -(-len(self.body) // pieces)
        for start in range(0, len(self.body), size):
            if self._wait(TRICKLE_SECONDS / pieces):
                return
            handler.wfile.write(self.body[start : start + size])
            handler.wfile.flush()

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if the server is stopping (or the route was healed)."""
        stop = self.server.stopping
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if stop.wait(min(0.05, max(0.0, deadline - time.monotonic()))) or self.healed:
                return True
        return False

    @staticmethod
    def _send_headers(handler: BaseHTTPRequestHandler, status: int, length: int, headers: dict[str, str]) -> None:
        handler.send_response(status)
        for name, value in {"Content-Length": str(length), **headers}.items():
            handler.send_header(name, value)
        handler.end_headers()

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        self._send_headers(handler, status, len(body), headers)
        if handler.command != "HEAD":
            with contextlib.suppress(OSError):  # the client may have hung up already
                handler.wfile.write(body)


@contextlib.contextmanager
def silent_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` where every connection is accepted and never answered (a dead proxy).

    The kernel completes each TCP handshake into the listen backlog; nobody ever reads or writes.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def install_healing(server: LoopbackServer) -> None:
    """``GET /_heal`` heals every faulty route of ``server`` (for tests driving a subprocess)."""

    def heal(handler: BaseHTTPRequestHandler) -> None:
        for route in list(server.routes.values()):
            if isinstance(route, FaultyRoute):
                route.heal()
        FaultyRoute._send_headers(handler, 200, 0, {})

    server.routes["/_heal"] = heal


ALLOWED_NAMES = {"CACHEDIR.TAG"}


def bad_files(roots: Iterable[Path], sha256: str | Iterable[str]) -> list[str]:
    """Files under ``roots`` that are neither a verified file (``sha256``: one digest or more), a lock nor a marker.

    Anything else (a ``.part`` or ``.incomplete`` file, a truncated or unverified copy) is bad.
    """
    verified = {sha256} if isinstance(sha256, str) else set(sha256)
    bad = []
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_dir() or path.name in ALLOWED_NAMES or path.suffix == ".lock" or "refs" in path.parts:
                continue
            if path.is_symlink() and not path.exists():
                bad.append(f"{path} (dangling link)")
            elif hashlib.sha256(path.read_bytes()).hexdigest() not in verified:
                bad.append(f"{path} ({path.stat().st_size} bytes, not the verified file)")
    return bad
