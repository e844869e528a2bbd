"""An ahead-of-time compiled :class:`~tiniest.fast.optimized.FastTiniest`, built once per machine and cached.

``torch.compile`` forgets its work when the process ends, and Inductor's on-disk cache skips
graphs whose weights are frozen into constants, so every ``tiniest evaluate`` would compile for
20-40 s again. Instead the inference graph is exported with a symbolic batch (1 to ``chunk``
images) and compiled by AOTInductor into a ``.pt2`` package: a shared library plus the frozen,
prepacked weights. It is stored in :func:`compiled_cache_dir` under a key of everything the
build depends on (weights, module source, torch version, CPU, compiler, thread count); later
processes load it in milliseconds. Builds run under a file lock and land by atomic rename, so
concurrent processes build once and no reader sees half a package. A new package is first run in a
child process on every batch size it serves (:func:`check_in_child`): a bad one crashes that child,
not the caller, and is never cached.

Loading a package runs native code this library compiled on this machine: trust the cache folder
as you trust the Python environment.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tiniest.storage import cache_dir, writer_lock
from tiniest.transforms import INPUT_SHIFT, INPUT_SIZE

__all__ = [
    "Runner",
    "check_in_child",
    "compiled_cache_dir",
    "find_compiler",
    "load_cached",
    "load_or_build",
    "open_package",
    "package_key",
]

Runner = Callable[[torch.Tensor], torch.Tensor]

logger = logging.getLogger(__name__)

# Bump when the build options change (the module's source file is already part of the key).
PACKAGE_FORMAT = 3
# A peer's build takes tens of seconds; wait this long before building alongside it.
LOCK_TIMEOUT_S = 600.0
# The child process that tries a new package: interpreter start, torch import, load and 15 calls.
CHECK_TIMEOUT_S = 300.0


def compiled_cache_dir() -> Path:
    """``$TINIEST_COMPILED_CACHE``, else ``$TINIEST_CACHE/compiled`` (see :func:`tiniest.storage.cache_dir`)."""
    configured = os.environ.get("TINIEST_COMPILED_CACHE")
    return Path(configured).expanduser() if configured else cache_dir() / "compiled"


def find_compiler() -> str:
    """The C++ compiler Inductor will use (``$CXX`` first), or ``""`` if there is none."""
    configured = os.environ.get("CXX")
    candidates = ([configured] if configured else []) + ["g++", "c++", "clang++"]
    return next((found for name in candidates if (found := shutil.which(name))), "")


def _source_digest(module: nn.Module) -> str:
    """sha256 of the file that defines ``module``'s class (its forward and helpers)."""
    source = inspect.getsourcefile(type(module))
    return hashlib.sha256(Path(source).read_bytes()).hexdigest() if source else ""


def package_key(module: nn.Module, chunk: int) -> str:
    """sha256 of the module's tensors and of everything else the generated code depends on."""
    digest = hashlib.sha256()
    build = {
        "format": PACKAGE_FORMAT,
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "system": platform.system(),
        "compiler": find_compiler(),
        "threads": torch.get_num_threads(),  # baked into the generated OpenMP loops
        "chunk": chunk,
        "module": type(module).__qualname__,
        "source": _source_digest(module),  # a changed forward must never load an old package
    }
    digest.update(json.dumps(build, sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _build(module: nn.Module, chunk: int, target: Path) -> None:
    """Export ``module`` with batch 1..``chunk`` and compile it with AOTInductor into ``target``."""
    import torch._inductor.config

    batch = torch.export.Dim("batch", min=1, max=chunk)
    example = torch.zeros(chunk, 3, *INPUT_SIZE).contiguous(memory_format=torch.channels_last)
    # Freezing makes the weights constants, prepacked for oneDNN's convolutions and matmuls; Inductor
    # applies it only where autograd is off, so the compile call needs no_grad as much as the export.
    with torch.no_grad(), torch._inductor.config.patch(freezing=True):
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        torch._inductor.aoti_compile_and_package(program, package_path=os.fspath(target))


def open_package(path: Path) -> Runner:
    """Load a package, bypassing ``aoti_load_package`` where torch offers its loader directly.

    The public loader imports Inductor and re-probes the CPU's vector ISA by compiling test
    programs, about 3 s per process; the cache key already pins the CPU and torch version.
    """
    loader_class = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if loader_class is None:
        from torch._inductor import aoti_load_package

        return aoti_load_package(os.fspath(path))
    loader = loader_class(os.fspath(path), "model", False, 1, -1)
    return lambda x: loader.boxed_run([x])[0]


def _load(path: Path, *, remove_broken: bool = False) -> Runner | None:
    """The package at ``path``, or None if it is absent or unreadable.

    ``remove_broken`` (only under the writer lock, so no peer's fresh package is hit): warn about
    and delete a package that cannot be loaded, so that it gets rebuilt.
    """
    if not path.is_file():
        return None
    try:
        return open_package(path)
    except Exception as error:  # a truncated or foreign file: rebuild rather than fail
        if remove_broken:
            warnings.warn(f"compiled package {path} could not be loaded ({error}); rebuilding it", stacklevel=3)
            path.unlink(missing_ok=True)
        return None


def _package_path(module: nn.Module, chunk: int) -> Path:
    return compiled_cache_dir() / f"tiniest-{package_key(module, chunk)[:32]}.pt2"


def load_cached(module: nn.Module, chunk: int) -> Runner | None:
    """The package for ``module`` if this machine has already built it, else None; never builds."""
    return _load(_package_path(module, chunk))


def load_or_build(module: nn.Module, chunk: int) -> Runner:
    """The cached package for ``module``, building it first if this machine has none.

    A build is announced in one log line (a warning, so that it shows without logging set up):
    it takes tens of seconds, and the caller would otherwise see a silent pause.
    Raises whatever export or compilation raises; the caller decides on a fallback.
    """
    target = _package_path(module, chunk)
    folder = target.parent
    runner = _load(target)
    if runner is not None:
        return runner
    # Measured: 26-28 s on 2 idle cores, 60-85 s on 2 busy ones.
    logger.warning(
        "tiniest: compiling the fast model for these weights, once per machine (about 30 s on 2 idle cores, "
        "longer on a busy machine); later runs load it from %s",
        folder,
    )
    with writer_lock(folder / ".locks" / f"{target.name}.lock", LOCK_TIMEOUT_S) as access:
        runner = _load(target, remove_broken=access == "locked")  # a peer may have built it meanwhile
        if runner is not None:
            return runner
        if access == "unusable":  # build where we can, load, and keep nothing
            with tempfile.TemporaryDirectory(prefix="tiniest-compiled-") as scratch:
                _build_checked(module, chunk, Path(scratch) / target.name)
                return _loaded(Path(scratch) / target.name)
        scratch_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=folder))
        try:
            _build_checked(module, chunk, scratch_dir / target.name)
            os.replace(scratch_dir / target.name, target)
        finally:
            shutil.rmtree(scratch_dir, ignore_errors=True)
        return _loaded(target)


def _build_checked(module: nn.Module, chunk: int, target: Path) -> None:
    """Build into ``target``, then try it in a child process; the caller deletes it if either raises."""
    _build(module, chunk, target)
    check_in_child(target, module, chunk)


def check_in_child(path: Path, module: nn.Module, chunk: int) -> None:
    """Run the package at ``path`` in a child process on every batch size 1..``chunk``, against ``module``.

    Raises RuntimeError if the child crashes, hangs or disagrees (see :mod:`tiniest.fast._package_check`),
    so that a bad package is neither cached nor loaded here.
    """
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.rand(batch, 3, *INPUT_SIZE, generator=generator) + INPUT_SHIFT for batch in range(1, chunk + 1)]
    with torch.no_grad():
        expected = [module(x) for x in inputs]
    package_root = Path(__file__).resolve().parents[2]  # also works from a checkout that is not installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(package_root), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="tiniest-check-") as scratch:
        cases = Path(scratch) / "cases.pt"
        torch.save({"inputs": inputs, "expected": expected}, cases)
        command = [sys.executable, "-m", "tiniest.fast._package_check", os.fspath(path), os.fspath(cases)]
        command.append(str(torch.get_num_threads()))
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the compiled package failed its check: no answer in {CHECK_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        if done.returncode < 0:
            reason = f"the child process was killed by {signal.Signals(-done.returncode).name}"
        else:
            reason = (done.stdout.strip() or done.stderr.strip() or f"exit status {done.returncode}").splitlines()[-1]
        raise RuntimeError(f"the compiled package failed its check in a child process: {reason}")


def _loaded(path: Path) -> Runner:
    runner = _load(path)
    if runner is None:
        raise RuntimeError(f"AOTInductor built {path} but it could not be loaded")
    return runner
