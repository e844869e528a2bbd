"""Where weights come from: each source on its real code path, against loopback servers."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

import tiniest
from tests.conftest import ROOT
from tests.loopback import LoopbackServer, hf_resolve_path, serve_like_the_hub
from tiniest.errors import (
    IncompatibleWeightsError,
    TiniestWarning,
    UnverifiedWeightsWarning,
    UsageError,
    WeightsNotFoundError,
)
from tiniest.weights import TiniestWeights, load_weights, torch_cache_path
from tiniest.weights.artifact import to_safetensors
from tiniest.weights.formats import read_weights, sha256_hex
from tiniest.weights.sources import original_cache_path

RELEASE = TiniestWeights.DEFAULT.release
GITHUB_ROUTE = RELEASE.url.removeprefix("https://github.com")  # the release asset, under any mirror
HUB = RELEASE.where["huggingface"]
HUB_FILE = (HUB["repo_id"], HUB["revision"], HUB["filename"])


def serve_github_release(server: LoopbackServer, body: bytes) -> None:
    """Like GitHub: the release URL redirects to a storage host that serves the bytes."""
    server.redirect(GITHUB_ROUTE, f"{server.url}/storage/release-asset?sig=x")
    server.serve("/storage/release-asset", body, headers={"Content-Type": "application/octet-stream"})


@pytest.fixture
def github(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> LoopbackServer:
    monkeypatch.setenv("TINIEST_GITHUB_URL", server.url)
    return server


def test_export_reproduces_the_pinned_release(release_bytes: bytes) -> None:
    assert sha256_hex(release_bytes) == RELEASE.sha256
    assert len(release_bytes) == RELEASE.size
    meta = read_weights(release_bytes)[1]
    assert meta["source_sha256"] == RELEASE.source_sha256
    assert json.loads(meta["categories"]) == list(tiniest.CLASSES)
    assert json.loads(meta["num_params"]) == 97_530
    assert meta["license"] == "MIT"
    assert "xvel/cifar10-tiniest" in meta["credit"] and "ThalesGroup" in meta["credit"]


@pytest.mark.slow
def test_export_command_is_byte_reproducible(shared_checkpoint: Path, tmp_path: Path) -> None:
    outputs = []
    for name in ("a", "b"):
        run = subprocess.run(
            [sys.executable, "-m", "tiniest", "export", str(shared_checkpoint), "--output", str(tmp_path / name)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert RELEASE.sha256 in run.stdout
        outputs.append((tmp_path / name / RELEASE.filename).read_bytes())
    assert outputs[0] == outputs[1]


def test_github_release_follows_redirect_verifies_and_caches(github: LoopbackServer, release_bytes: bytes) -> None:
    serve_github_release(github, release_bytes)
    loaded = load_weights(progress=False)
    assert (loaded.source, loaded.verified) == ("github", True)
    assert github.paths_requested() == [GITHUB_ROUTE, "/storage/release-asset"]
    assert torch_cache_path(RELEASE).read_bytes() == release_bytes

    again = load_weights(progress=False)
    assert again.source == "cache"
    assert len(github.requests) == 2, "a cached load must not make any request"


def test_github_hash_mismatch_is_not_kept_and_error_lists_every_source(
    github: LoopbackServer, release_bytes: bytes
) -> None:
    serve_github_release(github, release_bytes[:-1] + b"x")
    with pytest.raises(WeightsNotFoundError) as caught:
        load_weights(sources=["local", "cache", "github", "original"], progress=False)
    message = str(caught.value)
    for source in ("local:", "cache:", "github:", "original:"):
        assert source in message
    assert "wrong bytes" in message and "HTTP 404" in message
    assert "TINIEST_WEIGHTS" in message and RELEASE.sha256 in message
    checkpoints = torch_cache_path(RELEASE).parent
    assert not checkpoints.exists() or list(checkpoints.iterdir()) == [], "nothing may be cached"


def test_404_falls_through_to_the_original_checkpoint(
    github: LoopbackServer, shared_checkpoint: Path, release_bytes: bytes
) -> None:
    github.serve(f"/{RELEASE.source_path}", shared_checkpoint.read_bytes())
    loaded = load_weights(sources="github,original", progress=False)
    assert (loaded.source, loaded.verified) == ("original", True)
    assert github.paths_requested() == [GITHUB_ROUTE, f"/{RELEASE.source_path}"]
    assert original_cache_path(RELEASE).read_bytes() == shared_checkpoint.read_bytes(), "cached as it came, verified"
    assert not torch_cache_path(RELEASE).exists(), "no conversion at load time"


def test_weights_folder_drop_in_needs_no_network(
    isolated_caches: Path, github: LoopbackServer, shared_checkpoint: Path, release_bytes: bytes
) -> None:
    folder = isolated_caches / "weights"
    folder.mkdir()
    (folder / "not-it.safetensors").write_bytes(b"junk")
    (folder / "tiniest.pt").write_bytes(shared_checkpoint.read_bytes())
    loaded = load_weights(progress=False)
    assert (loaded.source, loaded.location) == ("local", str(folder / "tiniest.pt"))
    assert github.requests == []


def test_corrupt_cache_file_is_replaced(github: LoopbackServer, release_bytes: bytes) -> None:
    cached = torch_cache_path(RELEASE)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(release_bytes[: len(release_bytes) // 2])
    serve_github_release(github, release_bytes)
    assert load_weights(progress=False).source == "github"
    assert cached.read_bytes() == release_bytes


@pytest.mark.parametrize("switch", ["TINIEST_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_switch_makes_no_network_call(
    switch: str, github: LoopbackServer, release_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_github_release(github, release_bytes)
    monkeypatch.setenv(switch, "1")
    with pytest.raises(WeightsNotFoundError, match="offline mode"):
        load_weights(progress=False)
    assert github.requests == []


def test_caller_file_that_is_not_the_release_loads_with_a_warning(tmp_path: Path) -> None:
    other = tiniest.Tiniest()
    path = tmp_path / "mine.pt"
    torch.save(other.state_dict(), path)
    with pytest.warns(UnverifiedWeightsWarning, match="not the pinned release"):
        model = tiniest.tiniest(weights=str(path))
    torch.testing.assert_close(model.fc.weight, other.fc.weight)


def test_environment_variable_names_the_weights(shared_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINIEST_WEIGHTS", str(shared_checkpoint))
    loaded = load_weights(progress=False)
    assert (loaded.source, loaded.verified, loaded.sha256) == ("file", True, RELEASE.sha256)


def test_caller_url_is_downloaded(server: LoopbackServer, release_bytes: bytes) -> None:
    server.serve("/mirror/weights.safetensors", release_bytes)
    loaded = load_weights(f"{server.url}/mirror/weights.safetensors", progress=False)
    assert (loaded.source, loaded.verified) == ("file", True)


@pytest.mark.parametrize("spec", ["://x", "file://{folder}", "ftp://127.0.0.1/w.safetensors", "FILE:///etc/passwd"])
def test_a_weights_url_other_than_http_is_one_usage_error(spec: str, tmp_path: Path) -> None:
    """urllib would open file: URLs (a folder retried, a FIFO waited on forever) and choke on "://x"."""
    url = spec.format(folder=tmp_path)
    with pytest.raises(UsageError, match=rf"^expected an http\(s\) URL for the weights, got {re.escape(repr(url))}$"):
        load_weights(url, progress=False)


def test_a_weights_url_naming_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "w.safetensors")
    code = f"from tiniest.weights import load_weights\nload_weights('file://{tmp_path}/w.safetensors')\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert "UsageError: expected an http(s) URL for the weights, got 'file://" in run.stderr, run.stderr


@pytest.mark.parametrize("url", ["://x", "http://127.0.0.1:port/w.safetensors", "http://[::1/w"])
def test_a_url_urllib_refuses_is_a_download_error(url: str) -> None:
    from tiniest.errors import DownloadError
    from tiniest.weights.fetch import fetch

    with pytest.raises(DownloadError, match=rf"^cannot download {re.escape(url)}: "):
        fetch(url, max_bytes=1)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"<html>not weights</html>", "neither"),
        (b"", "neither"),
    ],
)
def test_unreadable_caller_file_is_a_clear_error(content: bytes, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.warns(UnverifiedWeightsWarning), pytest.raises(ValueError, match=expected):
        load_weights(str(path), progress=False)


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"payload": os.system}, path)
    with pytest.warns(UnverifiedWeightsWarning), pytest.raises(ValueError) as caught:
        load_weights(str(path), progress=False)
    message = str(caught.value)
    assert "refused: this .pt file holds more than tensors" in message and "weights_only=True" in message
    assert re.search(r"torch says: .*GLOBAL posix\.system.*blocked\..*https://\S+\.$", message), message
    assert "will likely succeed" not in message, "never the advice to load it with weights_only=False"


def test_wrong_architecture_is_summarised_not_listed(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(10, 80), "weight": torch.zeros(3)}, path)
    with pytest.warns(UnverifiedWeightsWarning), pytest.raises(RuntimeError) as caught:
        tiniest.tiniest(weights=str(path))
    message = str(caught.value)
    assert re.search(
        r"does not fit Tiniest: expected its 88 tensors, got 2; 87 missing \(\S+, \S+, \S+ and 84 more\)"
        r", 1 unexpected \(weight\)$",
        message,
    ), message


def test_tensor_of_another_shape_is_named(tmp_path: Path) -> None:
    state = tiniest.Tiniest().state_dict()
    expected = tuple(state["conv1.weight"].shape)
    state["conv1.weight"] = torch.zeros(5, 3)
    path = tmp_path / "reshaped.safetensors"
    path.write_bytes(to_safetensors(state, {}))
    with pytest.warns(UnverifiedWeightsWarning), pytest.raises(RuntimeError) as caught:
        tiniest.tiniest(weights=path)
    assert str(caught.value).endswith(f"1 of another shape (conv1.weight (5, 3) instead of {expected})"), caught.value


WRITE_TWICE = """
import hashlib, sys, torch
from tiniest.weights.artifact import to_safetensors
generator = torch.Generator().manual_seed(0)
dtypes = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.float16, torch.bfloat16, torch.int32]
dtypes += [torch.float32, torch.float64, torch.int64, torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2]
state = {f"{name}.{i}": torch.randn(3, 2, generator=generator).to(dtype) for i, dtype in enumerate(dtypes)
         for name in ("b", "a")}
state |= {"scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)}
state["strided"] = torch.randn(4, 3, generator=generator).t()
metadata = {f"key{i}": f"value {i}" for i in range(12)}
print(hashlib.sha256(to_safetensors(state, metadata)).hexdigest())
"""


def test_the_writer_gives_the_same_bytes_in_every_process_and_the_library_reads_them() -> None:
    """The library alone orders metadata keys differently from one process to the next; the writer never does."""
    digests = {subprocess.run([sys.executable, "-c", WRITE_TWICE], capture_output=True, text=True, cwd=ROOT,
                              timeout=120, check=True).stdout.strip() for _ in range(3)}  # fmt: skip
    assert len(digests) == 1, digests
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    data = to_safetensors(state, {"z": "1", "a": "2"})
    loaded = safetensors.torch.load(data)
    assert all(torch.equal(loaded[k], state[k]) for k in state) and read_weights(data)[1] == {"z": "1", "a": "2"}
    (length,) = struct.unpack("<Q", data[:8])
    assert list(json.loads(data[8 : 8 + length])["__metadata__"]) == ["a", "z"], "a sorted header"


@pytest.mark.parametrize("name", ["DEFAULT", "CIFAR10_V1", "TiniestWeights.CIFAR10_V1", TiniestWeights.CIFAR10_V1])
def test_weights_by_name_like_torchvision(name: str | TiniestWeights, release_bytes: bytes) -> None:
    cached = torch_cache_path(RELEASE)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(release_bytes)
    model = tiniest.tiniest(weights=name)
    reference = tiniest.Tiniest()
    reference.load_state_dict(safetensors.torch.load(release_bytes))
    torch.testing.assert_close(model.state_dict(), reference.state_dict(), rtol=0, atol=0)
    assert load_weights(name, progress=False).source == "cache"


def test_weights_name_from_the_environment(release_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    torch_cache_path(RELEASE).parent.mkdir(parents=True)
    torch_cache_path(RELEASE).write_bytes(release_bytes)
    monkeypatch.setenv("TINIEST_WEIGHTS", "DEFAULT")
    assert (load_weights(progress=False).source, load_weights(progress=False).verified) == ("cache", True)


@pytest.mark.parametrize("name", ["default", "CIFAR10_V2", "TiniestWeights.IMAGENET"])
def test_unknown_weights_name_lists_the_valid_ones(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as caught:
        tiniest.tiniest(weights=name)
    message = str(caught.value)
    assert message.startswith(f"unknown weights {name!r}: expected one of 'CIFAR10_V1', 'DEFAULT'"), message
    assert "path" in message and "URL" in message


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("modle", UsageError, "unknown weights 'modle': expected one of"),
        ("{tmp}/missing.pt", WeightsNotFoundError, "weights file {tmp}/missing.pt does not exist"),
        ("{tmp}", WeightsNotFoundError, "weights {tmp} is a folder"),
        ("ftp://mirror/w.pt", UsageError, "expected an http(s) URL for the weights, got 'ftp://mirror/w.pt'"),
    ],
)
def test_a_bad_tiniest_weights_is_named_in_the_error(
    value: str, kind: type[Exception], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINIEST_WEIGHTS", value.format(tmp=tmp_path))
    with pytest.raises(kind, match=f"^TINIEST_WEIGHTS: {re.escape(expected.format(tmp=tmp_path))}"):
        load_weights(progress=False)


def test_a_file_whose_name_looks_like_a_weights_name_is_still_a_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save(tiniest.Tiniest().state_dict(), tmp_path / "my_weights")
    with pytest.warns(UnverifiedWeightsWarning):
        assert load_weights("my_weights", progress=False).location == "my_weights"


def test_an_error_inside_one_source_never_stops_the_chain(
    isolated_caches: Path, github: LoopbackServer, release_bytes: bytes
) -> None:
    """A folder named like a weights file is skipped, the local source fails: the next source runs."""
    (isolated_caches / "weights" / "broken.pt").mkdir(parents=True)
    serve_github_release(github, release_bytes)
    with pytest.warns(TiniestWarning, match="skipped broken.pt in .*: not regular files"):
        loaded = load_weights(sources="local,github", progress=False)
    assert (loaded.source, loaded.verified) == ("github", True)


def test_no_weights_folder_points_to_the_variable_not_into_site_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a wheel there is no weights/ folder beside the package: the message names TINIEST_WEIGHTS_DIR."""
    monkeypatch.delenv("TINIEST_WEIGHTS_DIR")
    monkeypatch.setattr("tiniest.weights.sources._CHECKOUT_WEIGHTS", tmp_path / "site-packages" / "weights")
    with pytest.raises(WeightsNotFoundError) as caught:
        load_weights(sources="local,cache", progress=False)
    message = str(caught.value)
    assert "a folder named by TINIEST_WEIGHTS_DIR" in message and "put it in /" not in message, message
    assert "a pip install has none" in message


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_respect_the_umask(
    umask: int, server: LoopbackServer, release_bytes: bytes, shared_checkpoint: Path, tmp_path: Path
) -> None:
    """torch.hub's cache after a download and after a copy from the Hugging Face cache, and exported files.

    In a child process: the umask is process-wide, and huggingface_hub reads HF_ENDPOINT at import.
    """
    serve_github_release(server, release_bytes)
    server.serve(f"/{RELEASE.source_path}", shared_checkpoint.read_bytes())
    env = {"HF_ENDPOINT": server.url, "TINIEST_GITHUB_URL": server.url, "HF_HOME": str(tmp_path / "hf")}
    code = (
        "import json, os\n"
        f"os.umask({umask})\n"
        "from pathlib import Path\n"
        "from tiniest.commands import main\n"
        "from tiniest.weights import TiniestWeights\n"
        "from tiniest.weights import load_weights, torch_cache_path\n"
        "cached, modes = torch_cache_path(TiniestWeights.DEFAULT.release), {}\n"
        "from tiniest.weights.sources import original_cache_path\n"
        "for source, kept in (('github', cached), ('original', original_cache_path(TiniestWeights.DEFAULT.release))):\n"
        "    loaded = load_weights(sources=source, progress=False)\n"
        "    modes[f'{source} from {loaded.location}'] = oct(kept.stat().st_mode & 0o777)\n"
        f"assert main(['export', {str(shared_checkpoint)!r}, '--output', {str(tmp_path / 'out')!r}]) == 0\n"
        f"modes |= {{p.name: oct(p.stat().st_mode & 0o777) for p in Path({str(tmp_path / 'out')!r}).iterdir()}}\n"
        "print(json.dumps(modes))\n"
    )
    run = run_python(code, env)
    assert run.returncode == 0, run.stderr
    modes = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(modes) >= 3 and set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_missing_caller_file_is_named() -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_weights("/nonexistent/tiniest.safetensors", progress=False)


def test_unknown_source_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown weights source"):
        load_weights(sources=["gitlab"], progress=False)


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter: huggingface_hub reads its settings at import."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env}, timeout=120
    )


@pytest.mark.slow
def test_hugging_face_hub_download_through_huggingface_hub(
    server: LoopbackServer, release_bytes: bytes, tmp_path: Path
) -> None:
    path = serve_like_the_hub(server, *HUB_FILE, release_bytes)
    env = {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    code = (
        "from tiniest.weights import load_weights\n"
        "w = load_weights(sources='huggingface', progress=False)\n"
        "print(w.source, w.verified, w.location)\n"
    )
    first = run_python(code, env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split()[:2] == ["huggingface", "True"]
    assert ("GET", path) in server.requests
    blobs = list((tmp_path / "hf").rglob("blobs/*"))
    assert [blob.read_bytes() for blob in blobs] == [release_bytes]

    count = len(server.requests)
    cached = run_python(code.replace("'huggingface'", "'cache'"), env)
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout.split()[:2] == ["cache", "True"]
    assert len(server.requests) == count


@pytest.mark.slow
def test_hub_bytes_that_fail_the_hash_are_never_loaded_or_copied(
    server: LoopbackServer, release_bytes: bytes, tmp_path: Path
) -> None:
    wrong = release_bytes[:-16] + bytes(16)  # of the pinned size: fetched, then refused by the hash
    serve_like_the_hub(server, *HUB_FILE, wrong)
    env = {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    run = run_python("from tiniest.weights import load_weights\nload_weights(sources='huggingface')", env)
    assert run.returncode != 0
    assert "served the wrong bytes: sha256" in run.stderr and "fetched again" in run.stderr, run.stderr
    # huggingface_hub keeps what the server served under its etag (its cache, its call); the cache source refuses it
    assert not (tmp_path / "torch").exists() or not any((tmp_path / "torch").rglob("*.safetensors"))
    again = run_python("from tiniest.weights import load_weights\nload_weights(sources='cache')", env)
    assert again.returncode != 0 and "Hugging Face cache: " in again.stderr and "is not the pinned file" in again.stderr


# --- hostile servers, files and settings ----------------------------------------------------------------

ENDLESS_BYTES = 256 * 1024 * 1024  # 650 times the pinned size: endless, as far as any bound is concerned
MB = 1024 * 1024


def endless(headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """A route answering 200 then zeros until the client hangs up (or 256 MiB: a safety net for the test machine).

    HEAD gets the headers only; without a Content-Length in ``headers``, the body ends when the connection does.
    """

    def route(handler) -> None:  # type: ignore[no-untyped-def]
        handler.close_connection = True
        handler.send_response(200)
        for name, value in {"Connection": "close", **(headers or {})}.items():
            handler.send_header(name, value)
        handler.end_headers()
        if handler.command != "GET":
            return
        chunk = bytes(MB)
        try:
            for _ in range(ENDLESS_BYTES // MB):
                handler.wfile.write(chunk)
        except OSError:  # the client hung up: what a bounded client does
            pass

    return route


# Runs one load in a fresh interpreter and reports its outcome, how much its peak memory grew
# (ru_maxrss, after every import) and how many bytes it wrote (wchar of /proc/self/io: files,
# sockets, pipes alike).
MEASURE = """
import json, resource, sys
import huggingface_hub.file_download, safetensors.torch
from tiniest.weights import load_weights

def written():
    return int(dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())["wchar"])

weights, sources = json.loads(sys.argv[1])
rss, wrote = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, written()
try:
    outcome = load_weights(weights, sources=sources, progress=False).source
except Exception as error:
    outcome = f"{type(error).__name__}: {error}"
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) * 1024
print(json.dumps({"outcome": outcome, "memory": grown, "written": written() - wrote}))
"""


def measured_load(weights: str | None, sources: str | None, env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps([weights, sources])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


needs_proc_io = pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="measures with /proc/self/io (Linux)")


@needs_proc_io
def test_an_endless_body_from_a_callers_url_is_cut_at_the_cap(server: LoopbackServer) -> None:
    """No Content-Length, no end: the download stops at TINIEST_MAX_DOWNLOAD_MB plus one byte."""
    server.routes["/x.safetensors"] = endless()
    result = measured_load(f"{server.url}/x.safetensors", None, {"TINIEST_MAX_DOWNLOAD_MB": "1"})
    assert re.search(r"sent more than the 1,048,576 bytes expected; stopped reading there$", result["outcome"]), result
    assert result["memory"] < 32 * MB, result


@needs_proc_io
@pytest.mark.parametrize("source", ["github", "original"])
def test_an_endless_body_from_github_is_cut_at_the_pinned_size(source: str, server: LoopbackServer) -> None:
    route = GITHUB_ROUTE if source == "github" else f"/{RELEASE.source_path}"
    server.routes[route] = endless()
    result = measured_load("DEFAULT", source, {"TINIEST_GITHUB_URL": server.url})
    size = RELEASE.size if source == "github" else RELEASE.source_size
    assert f"sent more than the {size:,} bytes expected; stopped reading there" in result["outcome"], result
    assert result["memory"] < 32 * MB, result


@needs_proc_io
def test_a_content_length_over_the_bound_is_refused_before_the_body_is_read(server: LoopbackServer) -> None:
    server.routes[GITHUB_ROUTE] = endless({"Content-Length": str(10**12)})
    result = measured_load("DEFAULT", "github", {"TINIEST_GITHUB_URL": server.url})
    assert f"announces {10**12:,} bytes (Content-Length); at most {RELEASE.size:,} expected" in result["outcome"]
    assert result["memory"] < 32 * MB, result


def test_a_hub_file_announced_at_another_size_is_not_fetched(server: LoopbackServer, tmp_path: Path) -> None:
    from tests.faults import hub_headers

    path = hf_resolve_path(*HUB_FILE)
    server.routes[path] = endless({**hub_headers(b"x"), "Content-Length": str(10**12)})
    env = {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    run = run_python("from tiniest.weights import load_weights\nload_weights(sources='huggingface')", env)
    assert f"announces {10**12:,} bytes; the pinned file has {RELEASE.size:,}: not fetched" in run.stderr, run.stderr
    assert ("GET", path) not in server.requests


def test_a_bad_entry_of_the_hugging_face_cache_is_fetched_anew_and_kept_in_the_torch_cache(
    server: LoopbackServer, release_bytes: bytes, tmp_path: Path
) -> None:
    """A damaged blob where hf_hub_download would find it: a bad cache entry, not a bad Hub.

    The entry is laid out as the library lays its own (a snapshot link to a blob named by the etag). The file is
    fetched again into a folder of tiniest's own (the library's cache is left as it is), verified, and kept
    where torch.hub looks: the next load is a cache hit.
    """
    import hashlib

    serve_like_the_hub(server, *HUB_FILE, release_bytes)
    repo = tmp_path / "hf" / "hub" / f"models--{HUB['repo_id'].replace('/', '--')}"
    commit = hashlib.sha1(HUB["repo_id"].encode()).hexdigest()  # what the loopback Hub names its commit
    planted = repo / "snapshots" / commit / HUB["filename"]
    planted.parent.mkdir(parents=True)
    blob = repo / "blobs" / hashlib.sha256(release_bytes).hexdigest()
    blob.parent.mkdir()
    blob.write_bytes(release_bytes[:-16] + bytes(16))
    planted.symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / HUB["revision"]).write_text(commit)
    env = {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    code = "from tiniest.weights import load_weights\n"
    code += "print(load_weights(sources='huggingface', progress=False).source)\n"
    run = run_python(code, env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["huggingface"]
    assert "served the wrong bytes" not in run.stderr
    assert hashlib.sha256((tmp_path / "torch" / "hub" / "checkpoints" / RELEASE.filename).read_bytes()).hexdigest() == (
        RELEASE.sha256
    )
    assert planted.is_symlink() and blob.read_bytes() == release_bytes[:-16] + bytes(16), "the library's, untouched"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("ETag", '"../../../../victim/{name}"'),  # blobs/<etag> would climb out of the cache
        ("X-Repo-Commit", "{victim}"),  # snapshots/<absolute commit> is that absolute folder
        ("X-Repo-Commit", "../../../../victim"),
    ],
)
def test_a_hostile_hub_mirror_cannot_make_us_delete_a_file_outside_the_cache(
    header: str, value: str, server: LoopbackServer, release_bytes: bytes, tmp_path: Path
) -> None:
    """An etag or commit that is a path: huggingface_hub refuses it, the victim is untouched, nothing is loaded."""
    from tests.faults import hub_headers

    victim = tmp_path / "victim" / HUB["filename"]
    victim.parent.mkdir()
    victim.write_bytes(b"precious, and not the release")
    repo = tmp_path / "hf" / "hub" / f"models--{HUB['repo_id'].replace('/', '--')}"
    for folder in ("blobs", "snapshots"):  # as an earlier download leaves them: ../ climbs from there
        (repo / folder).mkdir(parents=True)
    hostile = value.format(name=HUB["filename"], victim=victim.parent)
    headers = {**hub_headers(release_bytes), header: hostile}
    path = hf_resolve_path(*HUB_FILE)
    server.serve(path, release_bytes, headers=headers)
    env = {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    run = run_python("from tiniest.weights import load_weights\nload_weights(sources='huggingface')", env)
    assert victim.read_bytes() == b"precious, and not the release"
    assert run.returncode != 0
    assert "did not answer like the Hugging Face Hub: expected a hex commit and etag" in run.stderr, run.stderr
    assert not (tmp_path / "torch").exists() or not any((tmp_path / "torch").rglob("*.safetensors"))


def test_a_bad_hugging_face_cache_entry_met_by_the_cache_source_is_reported_and_left(
    release_bytes: bytes, tmp_path: Path
) -> None:
    repo = tmp_path / "hf" / "hub" / f"models--{HUB['repo_id'].replace('/', '--')}"
    planted = repo / "snapshots" / ("0" * 40) / HUB["filename"]
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"planted")
    (repo / "refs").mkdir()
    (repo / "refs" / HUB["revision"]).write_text("0" * 40)
    env = {"HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    run = run_python("from tiniest.weights import load_weights\nload_weights(sources='cache')", env)
    assert f"Hugging Face cache: {planted} is not the pinned file" in run.stderr, run.stderr
    assert planted.read_bytes() == b"planted", "tiniest never deletes from a cache: the file may not be its own"


def test_a_fifo_or_folder_named_like_weights_is_skipped_with_one_warning(
    isolated_caches: Path, shared_checkpoint: Path
) -> None:
    """Sorted first, ``aaa.pt`` (a FIFO) and ``aab.pt`` (a folder) would hang or break the local source."""
    folder = isolated_caches / "weights"
    folder.mkdir()
    os.mkfifo(folder / "aaa.pt")
    (folder / "aab.pt").mkdir()
    (folder / "tiniest.pt").write_bytes(shared_checkpoint.read_bytes())
    code = (
        "import warnings\n"
        "from tiniest.weights import load_weights\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    loaded = load_weights(sources='local', progress=False)\n"
        "print(loaded.source, loaded.location)\n"
        "print([f'{w.category.__name__}: {w.message}' for w in caught])\n"
    )
    run = run_python(code, {"TINIEST_WEIGHTS_DIR": str(folder)})  # a hang ends in the 120 s timeout
    assert run.returncode == 0, run.stderr
    first, warned = run.stdout.strip().splitlines()[-2:]
    assert first == f"local {folder / 'tiniest.pt'}"
    assert warned == f"['TiniestWarning: skipped aaa.pt, aab.pt in {folder}: not regular files']"


def test_a_caller_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "w.safetensors")
    fifo = str(tmp_path / "w.safetensors")
    code = f"from tiniest.weights import load_weights\nload_weights({fifo!r}, progress=False)\n"
    run = run_python(code, {})
    assert "WeightsNotFoundError: could not read the weights you named: " in run.stderr, run.stderr
    assert "is a FIFO (named pipe), not a regular file" in run.stderr


def test_the_github_token_never_goes_over_plain_http(server: LoopbackServer, release_bytes: bytes, monkeypatch) -> None:
    monkeypatch.setenv("TINIEST_GITHUB_URL", server.url)
    monkeypatch.setenv("TINIEST_GITHUB_TOKEN", "ghp_secret")
    seen = []

    def route(handler) -> None:  # type: ignore[no-untyped-def]
        seen.append(handler.headers.get("Authorization"))
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(release_bytes)))
        handler.end_headers()
        handler.wfile.write(release_bytes)

    server.routes[GITHUB_ROUTE] = route
    with pytest.warns(TiniestWarning, match=r"TINIEST_GITHUB_TOKEN is not sent to http://\S+: a token goes over https"):
        assert load_weights(sources="github", progress=False).source == "github"
    assert seen == [None]


def test_the_hugging_face_token_never_goes_over_plain_http(
    server: LoopbackServer, release_bytes: bytes, tmp_path: Path
) -> None:
    from tests.faults import hub_headers

    seen = []
    path = hf_resolve_path(*HUB_FILE)

    def route(handler) -> None:  # type: ignore[no-untyped-def]
        seen.append((handler.command, handler.headers.get("Authorization")))
        handler.send_response(200)
        for name, value in {"Content-Length": str(len(release_bytes)), **hub_headers(release_bytes)}.items():
            handler.send_header(name, value)
        handler.end_headers()
        if handler.command == "GET":
            handler.wfile.write(release_bytes)

    server.routes[path] = route
    env = {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_secret"}
    run = run_python("from tiniest.weights import load_weights\nload_weights(sources='huggingface')", env)
    assert run.returncode == 0, run.stderr
    assert seen and all(auth is None for _, auth in seen), seen


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("TINIEST_TIMEOUT", "inf", r"a number in \(0, 86400\]"),
        ("TINIEST_TIMEOUT", "0", r"a number in \(0, 86400\]"),
        ("TINIEST_TIMEOUT", "-1", r"a number in \(0, 86400\]"),
        ("TINIEST_TIMEOUT", "nan", r"a number in \(0, 86400\]"),
        ("TINIEST_MAX_DOWNLOAD_MB", "0", r"a number in \[0.001, 65536\]"),
        ("TINIEST_MAX_DOWNLOAD_MB", "1e-300", r"a number in \[0.001, 65536\]"),
        ("TINIEST_OFFLINE", "maybe", r"1/true/yes/on or 0/false/no/off"),
        ("TINIEST_GITHUB_URL", "ftp://mirror", r"an http\(s\) URL such as https://github.com"),
        ("TINIEST_GITHUB_URL", "github.com", r"an http\(s\) URL such as https://github.com"),
    ],
)
def test_a_bad_setting_is_one_usage_error_naming_it(
    name: str, value: str, accepted: str, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.routes["/x.safetensors"] = endless({"Content-Length": "1"})
    monkeypatch.setenv("TINIEST_GITHUB_URL", server.url)
    monkeypatch.setenv(name, value)
    weights = f"{server.url}/x.safetensors" if name == "TINIEST_MAX_DOWNLOAD_MB" else "DEFAULT"
    with pytest.raises(UsageError, match=rf"^{name}: expected {accepted}, got '{re.escape(value)}'$"):
        load_weights(weights, sources="cache,github,original", progress=False)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.to(torch.int64), r"tensor conv1\.weight is int64; expected floating point weights$"),
        (lambda t: t.fill_(float("nan")), r"tensor conv1\.weight holds \d+ NaN or infinite value\(s\) out of \d+"),
        (lambda t: t.index_fill_(0, torch.tensor([0]), float("inf")), r"tensor conv1\.weight holds \d+ NaN or inf"),
        (lambda t: t.to(torch.float8_e4m3fn), r"tensor conv1\.weight is float8_e4m3fn; expected float16, bfloat16"),
    ],
)
def test_integer_or_non_finite_weights_are_refused_naming_the_tensor(change, expected: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = tiniest.Tiniest().state_dict()
    state["conv1.weight"] = change(state["conv1.weight"].clone())
    path = tmp_path / "odd.safetensors"
    path.write_bytes(to_safetensors(state, {}))
    with pytest.warns(UnverifiedWeightsWarning), pytest.raises(IncompatibleWeightsError, match=expected):
        tiniest.tiniest(weights=path)


def test_a_bare_safetensors_is_not_told_to_use_the_safetensors(tmp_path: Path) -> None:
    """The advice of NoClassNamesWarning fits a bare .safetensors too: a release's file carries the names."""
    from tiniest.weights.loading import NoClassNamesWarning

    path = tmp_path / "bare.safetensors"
    safetensors.torch.save_file(tiniest.Tiniest().state_dict(), str(path))
    with pytest.warns(UnverifiedWeightsWarning), pytest.warns(NoClassNamesWarning) as caught:
        tiniest.tiniest(weights=path)
    (message,) = [str(w.message) for w in caught if w.category is NoClassNamesWarning]
    assert "or use a release's .safetensors, which carries its names" in message, message


def test_a_hugging_face_cache_entry_linking_outside_the_cache_is_never_deleted(tmp_path: Path) -> None:
    """A shared HF_HOME holding a snapshot entry that is a link to another file: an offline load leaves both."""
    victim = tmp_path / "elsewhere" / "notes.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"a file of the user's, not the release")
    repo = tmp_path / "hf" / "hub" / f"models--{HUB['repo_id'].replace('/', '--')}"
    entry = repo / "snapshots" / ("0" * 40) / HUB["filename"]
    entry.parent.mkdir(parents=True)
    entry.symlink_to(victim)
    (repo / "refs").mkdir()
    (repo / "refs" / HUB["revision"]).write_text("0" * 40)
    env = {"HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"), "TINIEST_OFFLINE": "1"}
    run = run_python("import tiniest\ntiniest.tiniest()", env)
    assert run.returncode != 0 and "is not the pinned file" in run.stderr, run.stderr
    assert victim.read_bytes() == b"a file of the user's, not the release" and entry.is_symlink()


def test_metadata_nested_past_the_parser_is_kept_as_text_not_a_traceback(tmp_path: Path) -> None:
    """A safetensors metadata value of 100,000 nested brackets: JSON decoding gives up, the text is kept as is."""
    state = tiniest.Tiniest().state_dict()
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "deep.safetensors"
    path.write_bytes(to_safetensors(state, {"categories": json.dumps(list(tiniest.CLASSES)), "notes": deep}))
    with pytest.warns(UnverifiedWeightsWarning):
        model = tiniest.tiniest(weights=path)
    assert model.meta["notes"] == deep and model.labels == tiniest.CLASSES
