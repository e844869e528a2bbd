"""The compiled-package cache against other users and changed bytes: a package runs native code.

A package is loaded only from a folder that is this user's and that no one else can write, and
only if its bytes match the sha256 its build recorded beside it. These tests plant files in a cache
folder and never build a package: the native loader is replaced by a tripwire that records what
reached it and answers "cat" for every picture, as the planted package of the issue did. A real
build, a changed package and its rebuild are tested in ``test_optimize.py``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.fast.test_optimize import inputs, random_model
from tiniest.errors import CacheWarning
from tiniest.fast import compiled
from tiniest.fast.compiled import load_cached, load_or_build
from tiniest.fast.optimized import CHUNK, FastTiniest, compiler_available, optimize

ROOT = Path(__file__).resolve().parents[2]
SEED = 21
PLANTED = b"PK\x03\x04 a package someone else put here " * 500
OTHER_UID = 12345
pytestmark = pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX owners, modes and flock")
as_root = pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() != 0, reason="only root can give a file away")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "compiled"
    monkeypatch.setenv("TINIEST_COMPILED_CACHE", str(folder))
    return folder


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The packages handed to the native loader; each 'runs' and calls every picture a cat."""
    calls: list[Path] = []

    def planted_code(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
        calls.append(path)
        return lambda x: torch.tensor([[0.0, 0.0, 0.0, 99.0, 0, 0, 0, 0, 0, 0]]).expand(len(x), 10)

    monkeypatch.setattr(compiled, "open_package", planted_code)
    return calls


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that fails at once: these tests look at what happens around it, not at the compiler."""

    def failing_build(module: nn.Module, chunk: int, target: Path) -> None:
        target.write_bytes(b"half a package")
        raise RuntimeError("no compiler in this test")

    monkeypatch.setattr(compiled, "_build", failing_build)


def package_path(seed: int = SEED, chunk: int = CHUNK) -> Path:
    return compiled._package_path(FastTiniest(random_model(seed)), chunk)


def plant(seed: int = SEED, *, folder_mode: int = 0o700) -> Path:
    """The packages for ``random_model(seed)`` (batches, and one picture) with correct sha256 records, all
    private: what this user's build leaves. Returns the batches' package, the first one loaded."""
    for chunk in (1, CHUNK):
        path = package_path(seed, chunk)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, folder_mode)
        path.write_bytes(PLANTED)
        record = path.with_name(path.name + ".sha256")
        record.write_text(hashlib.sha256(PLANTED).hexdigest() + "\n")
        for file in (path, record):
            os.chmod(file, 0o600)
    return path


@pytest.fixture
def caught() -> Iterator[list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield seen


def cache_warnings(seen: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in seen if issubclass(w.category, CacheWarning)]


def test_a_package_this_user_built_is_loaded(cache: Path, loaded: list[Path], caught: list[object]) -> None:
    """The control for the tests below: a private folder, a private package matching its record."""
    path = plant()
    model = optimize(random_model(SEED), mode="cached")
    assert model.compiled and loaded == [path, package_path(SEED, 1)] and not caught
    with torch.no_grad():
        assert model(inputs(2)).argmax(1).tolist() == [3, 3]


def test_one_picture_runs_the_package_built_for_one(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its weights are prepacked for that shape (10-20 % less CPU a picture); every other batch runs the chunk's."""
    calls: list[Path] = []

    def recording(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: calls.append(path) or torch.zeros(len(x), 10)

    monkeypatch.setattr(compiled, "open_package", recording)
    batches, single = plant(), package_path(SEED, 1)
    model = optimize(random_model(SEED), mode="cached")
    with torch.no_grad():
        for batch in (1, 2, CHUNK, CHUNK + 1):
            assert model(inputs(batch)).shape == (batch, 10)
    assert calls == [single, batches, batches, batches, single], "the last chunk of 16 is one picture"


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_a_cache_folder_others_can_write_is_never_loaded_from(
    mode: int, cache: Path, loaded: list[Path], caught: list[warnings.WarningMessage]
) -> None:
    """A cache in /tmp (1777), a group's scratch space: anyone there could have planted the package."""
    plant(folder_mode=mode)
    model = optimize(random_model(SEED), mode="cached")
    assert not model.compiled and not loaded
    (message,) = cache_warnings(caught)
    assert f"not using the compiled-package cache {cache}" in message
    assert f"writable by group or others (mode {mode & 0o7777:04o})" in message
    assert "expected a folder of this user's that no one else can write" in message
    assert load_cached(FastTiniest(random_model(SEED)), CHUNK) is None and not loaded
    assert len(cache_warnings(caught)) == 1, "one warning per problem"


@as_root
def test_a_cache_folder_of_another_user_is_never_loaded_from(
    cache: Path, loaded: list[Path], caught: list[warnings.WarningMessage]
) -> None:
    plant()
    os.chown(cache, OTHER_UID, -1)
    assert not optimize(random_model(SEED), mode="cached").compiled and not loaded
    (message,) = cache_warnings(caught)
    assert f"owned by uid {OTHER_UID}, not by this user (uid 0)" in message


def _flip_40_bytes(path: Path, _: Path) -> None:
    data = bytearray(path.read_bytes())
    data[1000:1040] = bytes(b ^ 0xFF for b in data[1000:1040])
    path.write_bytes(bytes(data))


def _link_elsewhere(path: Path, tmp: Path) -> None:
    elsewhere = tmp / "elsewhere.pt2"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)


TAMPERED: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "40 bytes changed": (_flip_40_bytes, "its sha256 is "),
    "no record": (lambda path, _: Path(f"{path}.sha256").unlink(), "no record of its sha256 beside it"),
    "a record others can write": (
        lambda path, _: os.chmod(f"{path}.sha256", 0o622),
        "its sha256 record tiniest-",
    ),
    "a package others can write": (lambda path, _: os.chmod(path, 0o646), "it is writable by group or others"),
    "a symlink to a file elsewhere": (_link_elsewhere, "it is a symbolic link"),
}
AS_ROOT: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "a package of another user": (lambda path, _: os.chown(path, OTHER_UID, -1), f"it is owned by uid {OTHER_UID}"),
    "a record of another user": (
        lambda path, _: os.chown(f"{path}.sha256", OTHER_UID, -1),
        f".sha256 is owned by uid {OTHER_UID}",
    ),
}


@pytest.mark.parametrize("how", [*TAMPERED, *(pytest.param(name, marks=as_root) for name in AS_ROOT)])
def test_a_package_that_is_not_this_users_build_is_never_loaded(
    how: str, cache: Path, tmp_path: Path, loaded: list[Path], caught: list[warnings.WarningMessage]
) -> None:
    """Issue: 40 changed bytes made every picture 'cat 1.000'; a damaged package killed predict with SIGILL."""
    tamper, expected = {**TAMPERED, **AS_ROOT}[how]
    path = plant()
    tamper(path, tmp_path)
    assert load_cached(FastTiniest(random_model(SEED)), CHUNK) is None
    assert not optimize(random_model(SEED), mode="cached").compiled
    assert not loaded, "the native loader was never reached"
    (message,) = cache_warnings(caught)
    assert message.startswith(f"not loading the compiled package {path}: ") and expected in message


def test_a_changed_package_is_removed_and_rebuilt_under_the_lock(
    cache: Path, tmp_path: Path, loaded: list[Path], no_build: None, caught: list[warnings.WarningMessage]
) -> None:
    if not compiler_available():
        pytest.skip("no C++ compiler: optimize() never tries a build")
    path = plant()
    _flip_40_bytes(path, tmp_path)
    model = optimize(random_model(SEED))  # mode="compiled": a build is wanted
    assert not model.compiled and not loaded
    assert len(cache_warnings(caught)) == 1
    assert [str(w.message) for w in caught if "no compiler in this test" in str(w.message)], "a rebuild was tried"
    assert not path.exists() and not Path(f"{path}.sha256").exists(), "the changed package and its record are gone"


def test_a_build_never_writes_into_a_cache_folder_others_can_write(
    cache: Path, loaded: list[Path], no_build: None, caught: list[warnings.WarningMessage]
) -> None:
    if not compiler_available():
        pytest.skip("no C++ compiler: optimize() never tries a build")
    plant(folder_mode=0o777)
    before = sorted(p.name for p in cache.iterdir())
    assert not optimize(random_model(SEED)).compiled and not loaded
    assert sorted(p.name for p in cache.iterdir()) == before, "no lock, no temporary folder, no package"
    assert len(cache_warnings(caught)) == 1


def test_the_cache_folder_is_made_private_whatever_the_umask(cache: Path, no_build: None) -> None:
    """Made with the umask's mode (0777 under umask 0), it let any user plant packages in it."""
    previous = os.umask(0)
    try:
        with pytest.raises(RuntimeError, match="no compiler in this test"):
            load_or_build(FastTiniest(random_model(SEED)), CHUNK)
    finally:
        os.umask(previous)
    assert oct(cache.stat().st_mode & 0o7777) == oct(0o700)


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


KILLED_BUILDER = """
import sys, time
from tests.fast.test_optimize import random_model
from tiniest.fast import compiled
from tiniest.fast.optimized import CHUNK, FastTiniest

def stuck(module, chunk, target):
    target.write_bytes(b"half a package")
    print("building", flush=True)
    time.sleep(600)

compiled._build = stuck
compiled.load_or_build(FastTiniest(random_model(int(sys.argv[1]))), CHUNK)
"""


def test_the_build_folder_of_a_killed_builder_is_removed_by_the_next_build(cache: Path, no_build: None) -> None:
    """A builder SIGKILLed mid-build left ``.tiniest-<key>.pt2.<random>/`` in the cache for ever."""
    import fcntl

    builder = subprocess.Popen(
        [sys.executable, "-c", KILLED_BUILDER, str(SEED + 1)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert builder.stdout is not None and builder.stdout.readline().strip() == "building"
        (killed,) = [p for p in cache.iterdir() if p.name.startswith(".tiniest-")]
    finally:
        builder.kill()
        builder.wait(timeout=60)
    assert (killed / package_path(SEED + 1).name).exists(), "the half-built package it left"
    _age(killed, 120)
    live = cache / f".{package_path(SEED + 2).name}.live.part"  # a peer's build, running
    live.mkdir()
    _age(live, 120)
    recent = cache / f".{package_path(SEED + 3).name}.recent.part"  # made a moment ago, not locked yet
    recent.mkdir()
    handle = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="no compiler in this test"):
            load_or_build(FastTiniest(random_model(SEED)), CHUNK)
    finally:
        os.close(handle)
    left = sorted(p.name for p in cache.iterdir() if p.name != ".locks")
    assert left == sorted([live.name, recent.name]), "the killed builder's folder is gone; live and new ones stay"
