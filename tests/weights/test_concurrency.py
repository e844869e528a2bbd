"""Many processes at once, and processes killed mid-download: every load is verified and the cache stays sound."""

from __future__ import annotations

import hashlib
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
from tests.weights.test_faults import GITHUB_ROUTE, HUB_ROUTE, ORIGINAL_ROUTE, RELEASE, STORAGE_ROUTE, VERIFIED
from tiniest.weights import load_weights, torch_cache_path
from tiniest.weights.sources import original_cache_path

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


@pytest.mark.slow
def test_eight_processes_with_empty_caches_all_load_the_same_verified_weights(
    release_bytes: bytes, shared_checkpoint: Path, tmp_path: Path
) -> None:
    """Per source, 8 processes released at the same instant, downloads overlapping: 8 identical verified loads.

    No writer lock: each process may download (a second download of a 400 kB file is acceptable), verifies the
    sha256 and replaces the cached file whole, so no process ever reads a partial file and none is left behind.
    """
    checkpoint = shared_checkpoint.read_bytes()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with LoopbackServer() as server:
        server.redirect(GITHUB_ROUTE, server.url + STORAGE_ROUTE)
        server.routes[STORAGE_ROUTE] = slow(release_bytes, {})
        server.routes[ORIGINAL_ROUTE] = slow(checkpoint, {})
        server.routes[HUB_ROUTE] = slow(release_bytes, hub_headers(release_bytes))
        jobs, homes = [], {}
        for source in ("github", "huggingface", "original"):
            homes[source] = tmp_path / source
            env = {"TORCH_HOME": str(homes[source] / "torch"), "HF_HOME": str(homes[source] / "hf")}
            jobs += [{"call": "tests.procs:load_and_describe", "args": [f"cache,{source}"], "env": env}] * PROCESSES
        base = {**os.environ, "HF_ENDPOINT": server.url, "TINIEST_GITHUB_URL": server.url, "TINIEST_TIMEOUT": "5"}
        results = run_forked(jobs, together=True, env={**base, "TMPDIR": str(scratch)})
        gets = [path for method, path in server.requests if method == "GET"]

    assert all(r["ok"] for r in results), [r["error"] for r in results if not r["ok"]]
    values = [r["value"] for r in results]
    assert {(v["verified"], v["sha256"]) for v in values} == {(True, RELEASE.sha256)}
    assert len({v["digest"] for v in values}) == 1, "every process holds the same tensors"
    for index, source in enumerate(("github", "huggingface", "original")):
        group = {v["source"] for v in values[index * PROCESSES : (index + 1) * PROCESSES]}
        assert group <= {"cache", source}, group
        assert bad_files([homes[source]], VERIFIED) == [], "no temporary, partial or unverified file in any cache"
    assert (checkpoints_in(homes["github"]) / RELEASE.filename).read_bytes() == release_bytes
    assert (checkpoints_in(homes["original"]) / original_cache_path(RELEASE).name).read_bytes() == checkpoint
    assert 1 <= gets.count(STORAGE_ROUTE) <= PROCESSES and 1 <= gets.count(ORIGINAL_ROUTE) <= PROCESSES, gets
    assert os.listdir(scratch) == [], "no temporary file left behind"


def checkpoints_in(home: Path) -> Path:
    return home / "torch" / "hub" / "checkpoints"


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
    # the body is kept in memory until verified: a kill mid-download leaves nothing in the torch cache at all
    assert bad_files([isolated_caches], VERIFIED) == [], "the killed process left nothing partial"

    route.heal()
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_weights(sources="github", progress=False)
    assert (loaded.source, loaded.verified) == ("github", True)
    assert [str(w.message) for w in caught] == [], "no lock, nothing to wait for or warn about"
    assert time.monotonic() - started < 2
    assert torch_cache_path(RELEASE).read_bytes() == release_bytes
    assert bad_files([isolated_caches], VERIFIED) == []


@pytest.mark.slow
def test_sigkill_mid_hub_download_then_next_load_succeeds(
    server: LoopbackServer, release_bytes: bytes, tmp_path: Path
) -> None:
    """The next load succeeds; the killed process's ``.incomplete`` is the library's to keep or clean, not ours."""
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
    assert bad_files([tmp_path / "torch"], VERIFIED) == [], "nothing partial in the torch cache"
    served = [hashlib.sha256(path.read_bytes()).hexdigest() for path in (tmp_path / "hf").rglob("snapshots/*/*")]
    assert served == [RELEASE.sha256], "the file the library serves from now on is the verified one"


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
