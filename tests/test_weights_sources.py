"""Where weights come from: each source on its real code path, against loopback servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiniest
from tests.conftest import ROOT
from tests.loopback import LoopbackServer, serve_like_the_hub
from tiniest.artifact import read_metadata, sha256_hex
from tiniest.release import TiniestWeights
from tiniest.weights import UnverifiedWeightsWarning, WeightsNotFoundError, load_weights, torch_cache_path

RELEASE = TiniestWeights.DEFAULT.release


def release_route() -> str:
    return f"/{RELEASE.github_repo}/releases/download/{RELEASE.github_tag}/{RELEASE.filename}"


def serve_github_release(server: LoopbackServer, body: bytes) -> None:
    """Like GitHub: the release URL redirects to a storage host that serves the bytes."""
    server.redirect(release_route(), f"{server.url}/storage/release-asset?sig=x")
    server.serve("/storage/release-asset", body, headers={"Content-Type": "application/octet-stream"})


@pytest.fixture
def github(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> LoopbackServer:
    monkeypatch.setenv("TINIEST_GITHUB_URL", server.url)
    return server


def test_export_reproduces_the_pinned_release(release_bytes: bytes) -> None:
    assert sha256_hex(release_bytes) == RELEASE.sha256
    assert len(release_bytes) == RELEASE.size
    meta = read_metadata(release_bytes)
    assert meta["source_sha256"] == RELEASE.source_sha256
    assert json.loads(meta["categories"]) == list(tiniest.CLASSES)
    assert json.loads(meta["num_params"]) == 97_530
    assert meta["license"] == "MIT"
    assert "xvel/cifar10-tiniest" in meta["credit"] and "ThalesGroup" in meta["credit"]


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
    assert github.paths_requested() == [release_route(), "/storage/release-asset"]
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
    assert github.paths_requested() == [release_route(), f"/{RELEASE.source_path}"]
    assert torch_cache_path(RELEASE).read_bytes() == release_bytes, "the conversion is cached as the release file"


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
    with pytest.warns(UnverifiedWeightsWarning), pytest.raises(ValueError, match=r"weights_only|neither"):
        load_weights(str(path), progress=False)


def test_wrong_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.warns(UnverifiedWeightsWarning), pytest.raises(RuntimeError, match="Missing key"):
        tiniest.tiniest(weights=str(path))


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


def test_hugging_face_hub_download_through_huggingface_hub(
    server: LoopbackServer, release_bytes: bytes, tmp_path: Path
) -> None:
    path = serve_like_the_hub(server, RELEASE.hf_repo_id, RELEASE.hf_revision, RELEASE.hf_filename, release_bytes)
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


def test_hub_bytes_that_fail_the_hash_leave_no_trace(server: LoopbackServer, tmp_path: Path) -> None:
    serve_like_the_hub(server, RELEASE.hf_repo_id, RELEASE.hf_revision, RELEASE.hf_filename, b"not the weights")
    env = {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    run = run_python("from tiniest.weights import load_weights\nload_weights(sources='huggingface')", env)
    assert run.returncode != 0
    assert "wrong bytes" in run.stderr
    assert [p for p in (tmp_path / "hf").rglob("*") if p.is_file() and "blobs" in p.parts] == []
    assert not (tmp_path / "torch").exists() or not any((tmp_path / "torch").rglob("*.safetensors"))
