"""Many processes at once, and processes killed mid-download: the cache stays sound and the file is fetched once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.faults import FaultyRoute, bad_files, hub_headers
from tests.loopback import LoopbackServer
from tests.procs import run_forked
from tests.weights.test_faults import GITHUB_ROUTE, HUB_ROUTE, ORIGINAL_ROUTE, RELEASE, STORAGE_ROUTE
from tiniest.weights import load_weights, torch_cache_path

PROCESSES = 8


def slow(body: bytes, headers: dict[str, str], delay: float = 0.5) -> Callable[[BaseHTTPRequestHandler], None]:
    """A route that waits ``delay`` before answering: the first download is still running when the others ask."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        if handler.command == "GET":
            time.sleep(delay)
        handler.send_response(200)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            handler.send_header(name, value)
        handler.end_headers()
        if handler.command == "GET":
            handler.wfile.write(body)

    return route


def test_eight_processes_with_empty_caches_download_once_per_source(
    release_bytes: bytes, shared_checkpoint: Path, tmp_path: Path
) -> None:
    """Per source, 8 processes released at the same instant: one download, 8 identical verified loads."""
    checkpoint = shared_checkpoint.read_bytes()
    with LoopbackServer() as server:
        server.redirect(GITHUB_ROUTE, server.url + STORAGE_ROUTE)
        server.routes[STORAGE_ROUTE] = slow(release_bytes, {})
        server.routes[ORIGINAL_ROUTE] = slow(checkpoint, {})
        server.routes[HUB_ROUTE] = slow(release_bytes, hub_headers(release_bytes))
        jobs, homes = [], {}
        for source in ("github", "huggingface", "original"):
            homes[source] = tmp_path / source
            env = {"TORCH_HOME": str(homes[source] / "torch"), "HF_HOME": str(homes[source] / "hf")}
            jobs += [{"call": "tests.procs:load_and_describe", "args": [source], "env": env}] * PROCESSES
        base = {**os.environ, "HF_ENDPOINT": server.url, "TINIEST_GITHUB_URL": server.url, "TINIEST_TIMEOUT": "5"}
        results = run_forked(jobs, together=True, env=base)
        gets = [path for method, path in server.requests if method == "GET"]
        heads = [path for method, path in server.requests if method == "HEAD"]

    assert all(r["ok"] for r in results), [r["error"] for r in results if not r["ok"]]
    values = [r["value"] for r in results]
    assert {(v["verified"], v["sha256"]) for v in values} == {(True, RELEASE.sha256)}
    assert len({v["digest"] for v in values}) == 1, "every process holds the same tensors"
    for index, source in enumerate(("github", "huggingface", "original")):
        group = sorted(v["source"] for v in values[index * PROCESSES : (index + 1) * PROCESSES])
        assert group == ["cache"] * (PROCESSES - 1) + [source], "one download; the others found it cached"
        assert torch_cache_path_in(homes[source]).read_bytes() == release_bytes
        assert bad_files([homes[source]], RELEASE.sha256) == [], "no temporary or partial file"
    assert sorted(gets) == sorted([GITHUB_ROUTE, STORAGE_ROUTE, ORIGINAL_ROUTE, HUB_ROUTE])
    assert heads.count(HUB_ROUTE) == 2, "the Hub was asked for metadata by one process only (ours, then its own)"


def torch_cache_path_in(home: Path) -> Path:
    return home / "torch" / "hub" / "checkpoints" / RELEASE.filename


def start_loader(source: str, env: dict[str, str]) -> subprocess.Popen[str]:
    code = f"from tiniest.weights import load_weights\nload_weights(sources={source!r}, progress=False)\n"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_mid_download(child: subprocess.Popen[str], route: FaultyRoute) -> None:
    """SIGKILL ``child`` once the server has sent it half of the body (the route then waits)."""
    try:
        assert route.half_sent.wait(60), "the download never started: " + (child.stderr.read() if child.stderr else "")
        assert child.poll() is None, "the loader ended before it could be killed"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        if child.stderr:
            child.stderr.close()


def test_sigkill_mid_github_download_then_next_load_succeeds(
    server: LoopbackServer, release_bytes: bytes, isolated_caches: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINIEST_GITHUB_URL", server.url)
    monkeypatch.setenv("TINIEST_TIMEOUT", "2")
    server.redirect(GITHUB_ROUTE, server.url + STORAGE_ROUTE)
    route = FaultyRoute(server, STORAGE_ROUTE, "stall-mid-body", release_bytes)
    kill_mid_download(start_loader("github", {}), route)
    assert not torch_cache_path(RELEASE).exists()
    assert bad_files([isolated_caches], RELEASE.sha256) == [], "the killed process left nothing partial"

    route.heal()
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_weights(sources="github", progress=False)
    assert (loaded.source, loaded.verified) == ("github", True)
    assert [str(w.message) for w in caught] == [], "the dead process's lock was released by the kernel"
    assert time.monotonic() - started < 2
    assert torch_cache_path(RELEASE).read_bytes() == release_bytes
    assert bad_files([isolated_caches], RELEASE.sha256) == []


def test_sigkill_mid_hub_download_then_next_load_cleans_up_and_succeeds(
    server: LoopbackServer, release_bytes: bytes, tmp_path: Path
) -> None:
    route = FaultyRoute(server, HUB_ROUTE, "stall-mid-body", release_bytes, extra_headers=hub_headers(release_bytes))
    env = {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    kill_mid_download(start_loader("huggingface", {**env, "HF_HUB_DOWNLOAD_TIMEOUT": "30"}), route)
    leftovers = list((tmp_path / "hf").rglob("*.incomplete"))
    assert leftovers, "huggingface_hub writes to disk as it downloads: a kill leaves its temporary file"
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / RELEASE.filename).exists()

    route.heal()
    [result] = run_forked([{"call": "tests.procs:load_and_describe", "args": ["huggingface"], "env": env}])
    assert result["ok"], result.get("error")
    assert (result["value"]["source"], result["value"]["verified"]) == ("huggingface", True)
    assert bad_files([tmp_path / "hf", tmp_path / "torch"], RELEASE.sha256) == [], "the stale .incomplete is gone"


def test_a_killed_writers_temporary_file_is_removed(
    server: LoopbackServer, release_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a SIGKILL during the atomic write leaves (a ``.part`` no process holds) is cleaned by the next writer.

    (A real SIGKILL mid-write: ``tests/test_storage.py``.)
    """
    monkeypatch.setenv("TINIEST_GITHUB_URL", server.url)
    cached = torch_cache_path(RELEASE)
    cached.parent.mkdir(parents=True)
    stale = cached.parent / f".{cached.name}.k1ll3d.part"
    stale.write_bytes(release_bytes[:1000])
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    server.redirect(GITHUB_ROUTE, server.url + STORAGE_ROUTE)
    server.serve(STORAGE_ROUTE, release_bytes)
    assert load_weights(sources="cache,github", progress=False).source == "github"
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]
