"""Shared fixtures: the reference data in ../shared, isolated caches, a loopback HTTP server."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.loopback import LoopbackServer

# huggingface_hub reads HF_ENDPOINT and HF_HOME once, at import: point them at a closed loopback
# port and a throwaway folder so that no test can reach the real Hub or the user's cache (tests of
# the Hub path run in subprocesses with their own values).
DEAD_ENDPOINT = "http://127.0.0.1:9"
os.environ["HF_ENDPOINT"] = DEAD_ENDPOINT
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="tiniest-tests-hf-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# ONNX Runtime writes a device id under $XDG_CACHE_HOME (else ~/.cache) once per process, at its first
# session, whichever test opens it: a throwaway folder from the start, never the home of whoever runs the tests.
# uv keeps its own cache where it was (tests build venvs offline from it), as uv finds it: UV_CACHE_DIR, else
# the XDG cache folder of the user.
_user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
os.environ.setdefault("UV_CACHE_DIR", str(_user_cache / "uv"))
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="tiniest-tests-xdg-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SHARED_CHECKPOINT = SHARED / "weights" / "tiniest.pt"
SHARED_CIFAR10 = SHARED / "cifar10"
MODEL_CARD = SHARED / "reference" / "000_b37fd2edca8d687b.txt"


def copy_checkout(target: Path) -> Path:
    """This repository as torch.hub unpacks it: no tests, git, virtual environments or build outputs."""
    ignored = shutil.ignore_patterns(".git", ".venv*", "build", "*cache*", "tests", "runs", "*.egg-info")
    shutil.copytree(ROOT, target, ignore=ignored)
    return target


def shared_path(path: Path) -> Path:
    """``path`` under ../shared, or a skip (a failure when TINIEST_REQUIRE_SHARED=1, as in CI)."""
    if not path.exists():
        reason = f"{path} is absent (reference data lives in ../shared beside the checkout)"
        if os.environ.get("TINIEST_REQUIRE_SHARED") == "1":
            pytest.fail(reason + "; TINIEST_REQUIRE_SHARED=1 makes it mandatory")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def compiled_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of AOTInductor packages for the run: each costs tens of seconds to build.

    Under pytest-xdist every worker has a session of its own, so the folder sits beside their
    temporary folders, shared (the cache takes a writer's lock, as for processes of one user).
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "compiled"
        shared.mkdir(mode=0o700, exist_ok=True)  # the compiled cache refuses a folder others may write
        return shared
    return tmp_path_factory.mktemp("compiled")


@pytest.fixture(autouse=True)
def isolated_caches(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, compiled_packages: Path
) -> Path:
    """Every test gets empty caches (compiled packages aside), an empty weights/ folder, and no internet."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("TINIEST_WEIGHTS_DIR", str(home / "weights"))
    monkeypatch.setenv("TINIEST_GITHUB_URL", DEAD_ENDPOINT)
    monkeypatch.setenv("TINIEST_CACHE", str(home / "cache"))  # decoded datasets (tiniest.data)
    # Packages are keyed by their weights and build: sharing them changes no result, only the time.
    monkeypatch.setenv("TINIEST_COMPILED_CACHE", str(compiled_packages))
    for name in ("TINIEST_WEIGHTS", "TINIEST_OFFLINE", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def shared_checkpoint() -> Path:
    return shared_path(SHARED_CHECKPOINT)


@pytest.fixture
def shared_cifar10() -> Path:
    return shared_path(SHARED_CIFAR10)


@pytest.fixture
def model_card() -> str:
    return shared_path(MODEL_CARD).read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def release_bytes() -> bytes:
    """The release artifact exported from ../shared/weights/tiniest.pt (built, never committed)."""
    from tiniest.weights import TiniestWeights
    from tiniest.weights.artifact import build_artifact

    checkpoint = shared_path(SHARED_CHECKPOINT)
    return build_artifact(checkpoint.read_bytes(), TiniestWeights.DEFAULT.meta)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as running:
        yield running
