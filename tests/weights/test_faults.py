"""Every remote source against every fault (``tests/faults.py``), on real loopback sockets.

For each (source, fault): the load falls through to the next source, the reason says what went
wrong, the faulty server was asked as often as the retry policy says (3 times for a transient
fault, once otherwise: a server silent from the start is not asked again), nothing partial or
unverified is left in any cache, and once the server is healed the same source loads.

The Hugging Face scenarios run ``huggingface_hub`` in child processes (it reads ``HF_ENDPOINT`` at
import), all at once (``tests/procs.py``). tiniest calls the library's public API only: its retries
and per-read timeouts (``HF_HUB_ETAG_TIMEOUT``, ``HF_HUB_DOWNLOAD_TIMEOUT``) are the library's, and
its own cache keeps what the library leaves there. What tiniest promises for the Hub is checked:
the chain goes on, nothing unverified is returned, and nothing that fails the hash reaches the
torch cache (``$TORCH_HOME/hub/checkpoints``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.conftest import DEAD_ENDPOINT, ROOT, SHARED_CHECKPOINT, shared_path
from tests.faults import (
    FAULTS,
    PERMANENT,
    TRANSIENT,
    FaultyRoute,
    bad_files,
    hub_headers,
    install_healing,
    silent_endpoint,
)
from tests.loopback import LoopbackServer, hf_resolve_path
from tests.procs import run_forked
from tiniest.errors import WeightsNotFoundError
from tiniest.weights import TiniestWeights, load_weights, torch_cache_path
from tiniest.weights.sources import original_cache_path

RELEASE = TiniestWeights.DEFAULT.release
GITHUB_ROUTE = RELEASE.url.removeprefix("https://github.com")  # the release asset, under any mirror
HUB = RELEASE.where["huggingface"]
HUB_FILE = (HUB["repo_id"], HUB["revision"], HUB["filename"])
VERIFIED = (RELEASE.sha256, RELEASE.source_sha256)  # the release file, or the publisher's .pt kept as it is
STORAGE_ROUTE = "/storage/release-asset"  # where github.com redirects release downloads
ORIGINAL_ROUTE = f"/{RELEASE.source_path}"
HUB_ROUTE = hf_resolve_path(*HUB_FILE)
FALLBACK = {"github": "original", "original": "github", "huggingface": "github"}

# What the user reads for each fault (the reason logged, and listed in WeightsNotFoundError): the stable part.
REASONS = {
    "http-500": r"HTTP 500.*\(after 3 attempts\)",
    "http-503": r"HTTP 503.*\(after 3 attempts\)",
    "http-404": r"HTTP 404",
    "rate-limit-403": r"GitHub's rate limit .*resets at .*TINIEST_GITHUB_TOKEN.*huggingface.*weights/",
    "reset-mid-body": r"Connection reset by peer.*\(after 3 attempts\)",
    "short-body": r"incomplete download from \S+: expected [\d,]+ bytes, got [\d,]+ \(after 3 attempts\)$",
    "stall": r"sent nothing for 0.3 s \(TINIEST_TIMEOUT\)$",
    "stall-mid-body": r"sent nothing for 0.3 s \(TINIEST_TIMEOUT\) \(after 3 attempts\)",
    "wrong-bytes": r"served the wrong bytes: sha256 [0-9a-f]{64} \([\d,]+ bytes\), expected [0-9a-f]{64}",
    "corrupt-bytes": r"served the wrong bytes: sha256 [0-9a-f]{64} \([\d,]+ bytes\), expected [0-9a-f]{64}",
    "html-200": r"served the wrong bytes.*it is an HTML page",
    "redirect-loop": r"redirect loop",
    "trickle": r"download of \S+ took longer than 3 s \(10 x TINIEST_TIMEOUT\)$",
}


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short limits, so that the whole matrix runs in seconds: stalls cost 0.3 s, an attempt at most 3 s.

    (The backoff between attempts is fixed, 0.5 s then 1 s: a transient fault costs 1.5 s more.)
    """
    monkeypatch.setenv("TINIEST_TIMEOUT", "0.3")


def serve_good(server: LoopbackServer, source: str, release_bytes: bytes, checkpoint: bytes) -> None:
    """``source`` answers correctly (a GitHub release through its redirect to storage)."""
    if source == "github":
        server.redirect(GITHUB_ROUTE, server.url + STORAGE_ROUTE)
        server.serve(STORAGE_ROUTE, release_bytes, headers={"Content-Type": "application/octet-stream"})
    elif source == "original":
        server.serve(ORIGINAL_ROUTE, checkpoint)


def serve_fault(server: LoopbackServer, source: str, fault: str, release: bytes, checkpoint: bytes) -> FaultyRoute:
    if source == "github":  # github.com redirects, the storage host misbehaves (a loop goes back to github.com)
        server.redirect(GITHUB_ROUTE, server.url + STORAGE_ROUTE)
        return FaultyRoute(server, STORAGE_ROUTE, fault, release, loop_to=GITHUB_ROUTE)
    return FaultyRoute(server, ORIGINAL_ROUTE, fault, checkpoint)


def expected_attempts(fault: str) -> int | None:
    return None if fault == "redirect-loop" else 3 if fault in TRANSIENT else 1


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("source", ["github", "original"])
@pytest.mark.slow
def test_fault_falls_through_leaves_nothing_and_heals(
    source: str,
    fault: str,
    fast: None,
    server: LoopbackServer,
    release_bytes: bytes,
    shared_checkpoint: Path,
    isolated_caches: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    checkpoint = shared_checkpoint.read_bytes()
    monkeypatch.setenv("TINIEST_GITHUB_URL", server.url)
    route = serve_fault(server, source, fault, release_bytes, checkpoint)
    serve_good(server, FALLBACK[source], release_bytes, checkpoint)

    with caplog.at_level(logging.WARNING, logger="tiniest.weights"):
        loaded = load_weights(sources=[source, FALLBACK[source]], progress=False)
    assert (loaded.source, loaded.verified, loaded.sha256) == (FALLBACK[source], True, RELEASE.sha256)
    reasons = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"weights source {source} ")]
    assert len(reasons) == 1 and re.search(REASONS[fault], reasons[0]), reasons
    if expected_attempts(fault) is not None:
        assert route.faulted.count("GET") == expected_attempts(fault), "retries for transient faults only"
    assert bad_files([isolated_caches], VERIFIED) == []
    assert cached_file(FALLBACK[source]).read_bytes() == (
        checkpoint if FALLBACK[source] == "original" else release_bytes
    )

    route.heal()
    monkeypatch.setenv("TORCH_HOME", str(isolated_caches / "torch-after"))
    again = load_weights(sources=[source], progress=False)
    assert (again.source, again.verified) == (source, True)
    assert bad_files([isolated_caches], VERIFIED) == []


def cached_file(source: str) -> Path:
    """Where a verified download of ``source`` is kept: the publisher's .pt as it is, by its own name."""
    return original_cache_path(RELEASE) if source == "original" else torch_cache_path(RELEASE)


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.slow
def test_fault_on_the_only_source_is_one_clear_error(
    fault: str, fast: None, server: LoopbackServer, release_bytes: bytes, isolated_caches: Path, monkeypatch
) -> None:
    monkeypatch.setenv("TINIEST_GITHUB_URL", server.url)
    serve_fault(server, "github", fault, release_bytes, b"")
    with pytest.raises(WeightsNotFoundError) as caught:
        load_weights(sources="local,cache,github", progress=False)
    message = str(caught.value)
    lines = [line for line in message.splitlines() if line.startswith("  - ")]
    assert [line.split(":")[0] for line in lines] == ["  - local", "  - cache", "  - github"]
    assert re.search(REASONS[fault], lines[2]), lines[2]
    assert "TINIEST_WEIGHTS" in message and RELEASE.sha256 in message, "says how to supply the file by hand"
    assert bad_files([isolated_caches], VERIFIED) == []
    assert not torch_cache_path(RELEASE).exists()


@pytest.mark.parametrize("fault", TRANSIENT)
@pytest.mark.slow
def test_transient_fault_is_retried_and_then_loads(
    fault: str, fast: None, server: LoopbackServer, release_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINIEST_GITHUB_URL", server.url)
    server.redirect(GITHUB_ROUTE, server.url + STORAGE_ROUTE)
    route = FaultyRoute(server, STORAGE_ROUTE, fault, release_bytes, times=2)
    loaded = load_weights(sources="github", progress=False)
    assert (loaded.source, loaded.verified) == ("github", True)
    assert route.gets == 3 and route.faulted == ["GET", "GET"]
    assert torch_cache_path(RELEASE).read_bytes() == release_bytes


def test_transient_retries_wait_half_a_second_then_one(
    fast: None, server: LoopbackServer, release_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fixed policy, no knobs: 3 attempts in all, 0.5 s then 1 s apart."""
    monkeypatch.setenv("TINIEST_GITHUB_URL", server.url)
    route = serve_fault(server, "github", "http-503", release_bytes, b"")
    with pytest.raises(WeightsNotFoundError, match=r"HTTP 503.*\(after 3 attempts\)"):
        load_weights(sources="github", progress=False)
    assert route.faulted == ["GET"] * 3
    first, second, third = route.get_times
    assert 0.5 <= second - first < 1.0 and 1.0 <= third - second < 2.0, route.get_times


@pytest.mark.parametrize("source", ["github", "original"])
def test_redirect_chain_of_a_github_download(
    source: str, server: LoopbackServer, release_bytes: bytes, shared_checkpoint: Path, monkeypatch
) -> None:
    """github.com -> 302 -> assets host -> 307 -> signed storage URL (as GitHub serves releases and raw files)."""
    monkeypatch.setenv("TINIEST_GITHUB_URL", server.url)
    first = GITHUB_ROUTE if source == "github" else ORIGINAL_ROUTE
    server.redirect(first, f"{server.url}/assets/123", status=302)
    server.redirect("/assets/123", f"{server.url}/storage/blob?sig=abc&se=2099", status=307)
    body = release_bytes if source == "github" else shared_checkpoint.read_bytes()
    server.serve("/storage/blob", body, headers={"Content-Type": "application/octet-stream"})
    loaded = load_weights(sources=source, progress=False)
    assert (loaded.source, loaded.verified) == (source, True)
    assert server.paths_requested() == [first, "/assets/123", "/storage/blob"]
    assert cached_file(source).read_bytes() == body


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and its key), made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate for an https loopback server")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return cert, key


def test_token_goes_over_https_to_github_only_never_to_the_redirect_target(
    server: LoopbackServer, release_bytes: bytes, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """github.com (an https loopback server here) gets the token; the storage host it redirects to does not."""
    cert, key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # urllib's default context trusts our certificate
    monkeypatch.setenv("TINIEST_GITHUB_TOKEN", "ghp_secret")
    seen: dict[str, str | None] = {}
    storage = server.url.replace("127.0.0.1", "localhost") + STORAGE_ROUTE  # another host

    def record(path: str, reply: bytes | None):  # type: ignore[no-untyped-def]
        def route(handler) -> None:  # type: ignore[no-untyped-def]
            seen[path] = handler.headers.get("Authorization")
            handler.send_response(302 if reply is None else 200)
            if reply is None:
                handler.send_header("Location", storage)
            handler.send_header("Content-Length", str(len(reply or b"")))
            handler.end_headers()
            handler.wfile.write(reply or b"")

        return route

    github = LoopbackServer()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    github._httpd.socket = context.wrap_socket(github._httpd.socket, server_side=True)
    github.routes[GITHUB_ROUTE] = record(GITHUB_ROUTE, None)
    server.routes[STORAGE_ROUTE] = record(STORAGE_ROUTE, release_bytes)
    with github:
        monkeypatch.setenv("TINIEST_GITHUB_URL", github.url.replace("http://", "https://"))
        assert load_weights(sources="github", progress=False).source == "github"
    assert seen == {GITHUB_ROUTE: "Bearer ghp_secret", STORAGE_ROUTE: None}


# --- Hugging Face Hub: one subprocess per fault, all started together ---------------------------------

# What the user reads when the Hub source fails: huggingface_hub's error, or tiniest's checks of its answer.
# (The library's own retries and resumptions are its own: no attempt count here.)
HUB_REASONS = {
    "http-500": r"500 Internal Server Error",
    "http-503": r"503 Service Unavailable",
    "http-404": r"404 Not Found",
    "rate-limit-403": r"403 Forbidden",
    "reset-mid-body": r"Connection reset by peer",
    "short-body": r"RemoteProtocolError: peer closed connection without sending complete message body",
    "stall": r"ReadTimeout",  # HF_HUB_ETAG_TIMEOUT bounds the metadata request
    "stall-mid-body": r"ReadTimeout",  # HF_HUB_DOWNLOAD_TIMEOUT bounds each read
    "wrong-bytes": r"/resolve/main/model.safetensors served the wrong bytes: sha256 [0-9a-f]{64}",
    "corrupt-bytes": r"/resolve/main/model.safetensors served the wrong bytes: sha256 [0-9a-f]{64}",
    "html-200": r"/resolve/main/model.safetensors announces 102 bytes; the pinned file has 398,056: not fetched$",
    "redirect-loop": r"TooManyRedirects",
}
# tiniest's part in the requests: an answer refused at the metadata probe downloads nothing (an HTML page
# announcing 102 bytes is never fetched), and a body that fails the hash is fetched once more, forced.
HUB_NOTHING_FETCHED = ("http-500", "http-503", "http-404", "rate-limit-403", "html-200", "redirect-loop", "stall")
HUB_FETCHED_TWICE = ("wrong-bytes", "corrupt-bytes")


UNWANTED_ENV = {"TINIEST_WEIGHTS", "TINIEST_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE"}


@pytest.fixture(scope="module")
def hub_runs(release_bytes: bytes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict]]:
    """Every Hub scenario in its own process, with its own server and caches, all at once."""
    checkpoint = shared_path(SHARED_CHECKPOINT).read_bytes()
    runs: dict[str, dict] = {}
    jobs = []
    with tempfile.TemporaryDirectory(prefix="tiniest-tests-") as scratch, ExitStack() as servers:
        for fault in FAULTS:
            server = servers.enter_context(LoopbackServer())
            route = FaultyRoute(server, HUB_ROUTE, fault, release_bytes, extra_headers=hub_headers(release_bytes))
            serve_good(server, "github", release_bytes, checkpoint)
            install_healing(server)
            home = tmp_path_factory.mktemp(f"hub-{fault}")
            env = {
                "HF_ENDPOINT": server.url,
                "HF_HOME": str(home / "hf"),
                "TORCH_HOME": str(home / "torch"),  # the scenario's second load uses TORCH_HOME + "-after"
                "TINIEST_WEIGHTS_DIR": str(home / "weights"),
                "TINIEST_GITHUB_URL": server.url,
            }
            jobs.append({"call": "tests.procs:hub_scenario", "args": [RELEASE.sha256], "env": env})
            runs[fault] = {"route": route, "torch": [home / "torch", home / "torch-after"]}
        limits = {"TINIEST_TIMEOUT": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "1", "HF_HUB_ETAG_TIMEOUT": "1", "TMPDIR": scratch}
        # and a Hub that is not there at all, with the default limits
        home = tmp_path_factory.mktemp("hub-dead")
        dead = {"HF_ENDPOINT": DEAD_ENDPOINT, "HF_HOME": str(home / "hf"), "TORCH_HOME": str(home / "torch")}
        dead |= {"TINIEST_WEIGHTS_DIR": str(home / "weights"), "TINIEST_TIMEOUT": "10"}
        dead |= {"HF_HUB_ETAG_TIMEOUT": "10", "HF_HUB_DOWNLOAD_TIMEOUT": "10"}
        jobs.append({"call": "tests.procs:timed_load", "args": ["huggingface"], "env": dead})
        runs["dead-endpoint"] = {}
        base_env = {k: v for k, v in os.environ.items() if k not in UNWANTED_ENV} | limits
        for run, result in zip(runs.values(), run_forked(jobs, env=base_env), strict=True):
            run.update(result)
        left = sorted(os.listdir(scratch))
    for run in runs.values():
        run["temp_left"] = left
    yield runs


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.slow
def test_hub_fault_falls_through_leaves_nothing_and_heals(
    fault: str, hub_runs: dict[str, dict], release_bytes: bytes
) -> None:
    run = hub_runs[fault]
    # Only tiniest's cache is checked: huggingface_hub's cache (HF_HOME) may keep what the library left
    # there (locks, refs, an .incomplete or unverified blob); tiniest never edits the library's cache.
    assert bad_files(run["torch"], VERIFIED) == [], "nothing that fails the hash is in the torch cache"
    if fault in HUB_NOTHING_FETCHED:
        assert "GET" not in run["route"].faulted, "refused at the metadata probe: nothing downloaded"
    elif fault in HUB_FETCHED_TWICE:
        assert run["route"].faulted.count("GET") == 2, "a body that fails the hash is fetched once more, forced"
    assert run["ok"], run.get("error")
    result = run["value"]
    if fault == "trickle":  # huggingface_hub bounds each read, not the whole transfer: a slow one completes
        assert result["first"] == ["huggingface", True, True]
        assert result["reasons"] == []
    else:
        assert result["first"] == ["github", True, True]
        assert len(result["reasons"]) == 1 and re.search(HUB_REASONS[fault], result["reasons"][0]), result["reasons"]
        assert result["reasons"][0].startswith("weights source huggingface failed: "), result["reasons"]
    assert result["second"] == ["huggingface", True, True], "once healed, the Hub source loads"
    assert run["temp_left"] == [], "no temporary folder is left behind"


def test_a_dead_hub_endpoint_costs_seconds_not_half_a_minute(hub_runs: dict[str, dict]) -> None:
    """A refused connection fails the Hub's metadata request at once: the chain goes on within seconds."""
    run = hub_runs["dead-endpoint"]
    assert run["ok"], run.get("error")
    assert re.search(r"\n  - huggingface: ConnectError: ", run["value"]["outcome"]), run["value"]["outcome"]
    assert run["value"]["seconds"] < 8


@pytest.mark.slow
def test_a_silent_network_ends_in_one_clear_error_within_a_minute(tmp_path: Path) -> None:
    """Every source connects and nothing ever answers (a dead proxy, a firewall); default settings throughout.

    The user sees each URL tiniest downloads as it is waited for (huggingface_hub shows its own progress
    once a transfer starts) and a warning as each source is given up, then one error. Each source costs one
    silence bound: TINIEST_TIMEOUT for GitHub, the library's HF_HUB_ETAG_TIMEOUT (10 s too) for the Hub.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINIEST_", "HF_"))}
    with silent_endpoint() as url:
        env |= {"HF_ENDPOINT": url, "TINIEST_GITHUB_URL": url, "HF_HOME": str(tmp_path / "hf")}
        env |= {"TORCH_HOME": str(tmp_path / "torch"), "TINIEST_WEIGHTS_DIR": str(tmp_path / "weights")}
        start = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-c", "import tiniest; tiniest.tiniest()"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=180,
        )
        seconds = time.monotonic() - start
    assert run.returncode != 0 and run.stderr.count("Traceback") == 1, run.stderr
    assert "\ntiniest.errors.WeightsNotFoundError: could not find the weights" in run.stderr, run.stderr
    waited = re.findall(r'^Downloading: "(\S+)"$', run.stderr, flags=re.MULTILINE)
    assert waited == [url + GITHUB_ROUTE, url + ORIGINAL_ROUTE], run.stderr
    given_up = dict(re.findall(r"^weights source (\w+) failed: (.*)$", run.stderr, flags=re.MULTILINE))
    assert list(given_up) == ["github", "huggingface", "original"], run.stderr
    assert given_up["github"] == f"{url}{GITHUB_ROUTE} sent nothing for 10 s (TINIEST_TIMEOUT)", given_up
    assert given_up["original"] == f"{url}{ORIGINAL_ROUTE} sent nothing for 10 s (TINIEST_TIMEOUT)", given_up
    assert given_up["huggingface"].startswith("ReadTimeout"), given_up
    assert seconds < 60, f"{seconds:.1f} s to give up on a silent network"


def test_every_fault_is_in_the_matrix() -> None:
    assert set(FAULTS) == set(REASONS) == set(HUB_REASONS) | {"trickle"}
    assert set(TRANSIENT).isdisjoint(PERMANENT)
    assert set(HUB_NOTHING_FETCHED) | set(HUB_FETCHED_TWICE) <= set(HUB_REASONS)


# --- the cache folder itself is the problem ------------------------------------------------------------


def _try_mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    try:
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)]
        run = subprocess.run(command, capture_output=True, timeout=30)
    except OSError:  # no mount command
        return False
    return run.returncode == 0


@contextmanager
def tmpfs(target: Path, options: str) -> Iterator[bool]:
    """Mount a tiny tmpfs on ``target`` for the block if this machine allows it (root with CAP_SYS_ADMIN)."""
    target.mkdir(parents=True, exist_ok=True)
    mounted = _try_mount(target, options)
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


@contextmanager
def unwritable(folder: Path, problem: str) -> Iterator[str]:
    """Make ``folder`` read-only, or full, or impossible to create; yield how (or skip if this machine cannot).

    For "not-a-directory", use ``unusable_path(folder, problem)``: a path below a regular file.
    """
    if problem == "not-a-directory":  # e.g. TORCH_HOME set to a file by mistake
        blocker(folder).write_text("a file, not a folder")
        yield "under-a-file"
        return
    if problem == "read-only" and os.geteuid() != 0:
        folder.mkdir(parents=True)
        folder.chmod(0o555)
        try:
            yield "chmod 555"
        finally:
            folder.chmod(0o755)
        return
    options = "ro,size=64k" if problem == "read-only" else "size=64k"
    with tmpfs(folder, options) as mounted:
        if not mounted and problem == "read-only":
            pytest.skip("root here ignores chmod and mounting a read-only tmpfs is not allowed")
        yield "tmpfs" if mounted else "rlimit"


def blocker(folder: Path) -> Path:
    return folder.parent.parent / "a-file"


def unusable_path(folder: Path, problem: str) -> Path:
    return blocker(folder) / folder.name if problem == "not-a-directory" else folder


@pytest.mark.parametrize("problem", ["read-only", "full", "not-a-directory"])
def test_unusable_torch_cache_loads_in_memory_with_a_warning(
    problem: str, server: LoopbackServer, release_bytes: bytes, tmp_path: Path
) -> None:
    serve_good(server, "github", release_bytes, b"")
    hub = tmp_path / "torch" / "hub"
    folder = hub / "checkpoints" if problem == "full" else hub
    env = {**os.environ, "TINIEST_GITHUB_URL": server.url, "TMPDIR": str(tmp_path / "scratch")}
    (tmp_path / "scratch").mkdir()
    with unwritable(folder, problem) as how:
        env["TORCH_HOME"] = str(unusable_path(folder, problem).parent if problem != "full" else tmp_path / "torch")
        limit = 64 * 1024 if how == "rlimit" else None
        job = {"call": "tests.procs:load_with_warnings", "args": ["cache,github", limit]}
        [first, second] = run_forked([job, job], env=env)
        left = bad_files([tmp_path / "torch"], RELEASE.sha256)
        cached = (tmp_path / "torch" / "hub" / "checkpoints" / RELEASE.filename).exists()
    for result in (first, second):
        assert result["ok"], result.get("error")
        value = result["value"]
        assert (value["source"], value["verified"], value["sha256"]) == ("github", True, RELEASE.sha256)
        warned = [w for w in value["warnings"] if w.startswith("CacheWarning: could not cache the weights at ")]
        assert len(warned) == 1 and "loaded from memory" in warned[0], value["warnings"]
    assert not cached and left == [], "never a partial or corrupt cached file"
    assert os.listdir(tmp_path / "scratch") == []


@pytest.mark.parametrize("problem", ["not-a-directory", "full"])
@pytest.mark.slow
def test_unusable_hub_cache_fails_that_source_and_the_chain_goes_on(
    problem: str, server: LoopbackServer, release_bytes: bytes, tmp_path: Path
) -> None:
    """huggingface_hub cannot write its cache: the Hub source fails with the library's error, the next one loads.

    (tiniest no longer moves the library to a temporary folder: the library's cache is the library's.)
    """
    FaultyRoute(server, HUB_ROUTE, "http-500", release_bytes, extra_headers=hub_headers(release_bytes)).heal()
    serve_good(server, "github", release_bytes, b"")
    hf_cache = tmp_path / "hf" / "hub"
    (tmp_path / "scratch").mkdir()
    with unwritable(hf_cache, problem) as how:
        if how == "rlimit":
            pytest.skip("a file size limit would stop the torch cache too: needs a tmpfs to fill the Hub's alone")
        env = {
            **os.environ,
            "HF_ENDPOINT": server.url,
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_CACHE": str(unusable_path(hf_cache, problem)),
            "TORCH_HOME": str(tmp_path / "torch"),
            "TINIEST_GITHUB_URL": server.url,
            "TMPDIR": str(tmp_path / "scratch"),
        }
        jobs = [
            {"call": "tests.procs:load_with_warnings", "args": [sources]}
            for sources in ("huggingface,github", "huggingface")
        ]
        chained, alone = run_forked(jobs, env=env)
    assert chained["ok"], chained.get("error")
    value = chained["value"]
    assert (value["source"], value["verified"], value["sha256"]) == ("github", True, RELEASE.sha256)
    assert not alone["ok"] and "tiniest.errors.WeightsNotFoundError: could not find the weights" in alone["error"]
    tried = [line for line in alone["error"].splitlines() if line.lstrip().startswith("- ")]
    assert len(tried) == 1 and re.match(r"\s*- huggingface: \w+Error: ", tried[0]), alone["error"]
    assert bad_files([tmp_path / "torch"], VERIFIED) == [] and os.listdir(tmp_path / "scratch") == []
    assert (tmp_path / "torch" / "hub" / "checkpoints" / RELEASE.filename).read_bytes() == release_bytes
