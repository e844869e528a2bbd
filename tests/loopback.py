"""A scriptable HTTP server on 127.0.0.1 for tests: real sockets, no mocks of the clients."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

__all__ = ["LoopbackServer", "Reply"]


@dataclass
class Reply:
    """What the server answers on one path: a status, headers and a body."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Route = Reply | Callable[[BaseHTTPRequestHandler], None]


class LoopbackServer:
    """``routes[path]`` answers GET and HEAD; every request is logged in ``requests``."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str]] = []
        self.stopping = threading.Event()  # set on exit: routes that wait (stalls) stop waiting
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        # a short poll interval: shutdown() waits for it, at the end of every test
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve(self, path: str, body: bytes, *, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.routes[path] = Reply(status, body, dict(headers or {}))

    def redirect(self, path: str, location: str, *, status: int = 302) -> None:
        self.routes[path] = Reply(status, b"", {"Location": location})

    def paths_requested(self) -> list[str]:
        return [path for _, path in self.requests]

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet test output
                pass

            def _answer(self, with_body: bool) -> None:
                path = self.path.split("?", 1)[0]
                server.requests.append((self.command, path))
                route = server.routes.get(path, Reply(404, b"not found"))
                if callable(route):
                    route(self)
                    return
                self.send_response(route.status)
                headers = {"Content-Length": str(len(route.body)), **route.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if with_body:
                    self.wfile.write(route.body)

            def do_GET(self) -> None:
                self._answer(with_body=True)

            def do_HEAD(self) -> None:
                self._answer(with_body=False)

        return Handler


def hf_resolve_path(repo_id: str, revision: str, filename: str) -> str:
    """The Hub's download route for a model repo file (``/{repo}/resolve/{rev}/{file}``)."""
    return f"/{repo_id}/resolve/{revision}/{filename}"


def serve_like_the_hub(server: LoopbackServer, repo_id: str, revision: str, filename: str, body: bytes) -> str:
    """Answer the ``resolve`` route with the headers huggingface_hub checks; return the path."""
    import hashlib

    path = hf_resolve_path(repo_id, revision, filename)
    server.serve(
        path,
        body,
        headers={
            "X-Repo-Commit": hashlib.sha1(repo_id.encode()).hexdigest(),
            "ETag": f'"{hashlib.sha256(body).hexdigest()}"',
        },
    )
    return path
