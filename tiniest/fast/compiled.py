"""An ahead-of-time compiled :class:`~tiniest.fast.optimized.FastTiniest`, built once per machine and cached.

``torch.compile`` forgets its work when the process ends, and Inductor's on-disk cache skips
graphs whose weights are frozen into constants, so every ``tiniest evaluate`` would compile for
20-40 s again. Instead the inference graph is exported with a symbolic batch (1 to ``chunk``
images) and compiled by AOTInductor into a ``.pt2`` package: a shared library plus the frozen,
prepacked weights. It is stored in :func:`compiled_cache_dir` under a key of everything the
build depends on (weights, module source, torch version, CPU, compiler); later processes load it
in milliseconds. Its parallel loops ask OpenMP for the caller's thread count at run time, so one
package serves ``torch.set_num_threads(1)`` as well as the default. Builds run under a file lock
and land by atomic rename, so concurrent processes build once and no reader sees half a package.
A new package is first run in a child process on every batch size it serves
(:func:`check_in_child`): a bad one crashes that child, not the caller, and is never cached.

Loading a package runs native code this library compiled on this machine: trust the cache folder
as you trust the Python environment.
"""

from __future__ import annotations

import ctypes
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
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tiniest.env import env_path, env_text
from tiniest.errors import CacheWarning, warn
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
    "why_no_build",
]

Runner = Callable[[torch.Tensor], torch.Tensor]

logger = logging.getLogger(__name__)

# Bump when the build options change (the module's source file is already part of the key).
PACKAGE_FORMAT = 4
# A peer's build takes tens of seconds; wait this long before building alongside it.
LOCK_TIMEOUT_S = 600.0
# The child process that tries a new package: interpreter start, torch import, load and 15 calls.
CHECK_TIMEOUT_S = 300.0


def compiled_cache_dir() -> Path:
    """``$TINIEST_COMPILED_CACHE``, else ``$TINIEST_CACHE/compiled`` (see :func:`tiniest.storage.cache_dir`)."""
    return env_path("TINIEST_COMPILED_CACHE") or cache_dir() / "compiled"


def find_compiler() -> str:
    """The C++ compiler Inductor will use, or ``""`` if it is not there.

    Inductor takes ``$CXX`` if set (read when ``torch._inductor.config`` is imported), else ``g++``
    (``clang++`` on macOS), and no other: a ``c++`` on the PATH does not count.
    """
    configured = sys.modules.get("torch._inductor.config")
    if configured is not None:
        names = [name for name in getattr(configured.cpp, "cxx", ()) if name]
    else:
        names = [env_text("CXX") or ("clang++" if sys.platform == "darwin" else "g++")]
    return next((found for name in names if (found := shutil.which(name))), "")


def why_no_build() -> str | None:
    """Why this torch cannot build a package (one clause), or None if it can.

    Imports Inductor (about 2 s), so it is asked only when a build is about to happen. A package
    leaves the thread count of its loops to run time (``cpp.dynamic_threads``), so that one package
    serves every thread count and :func:`package_key` need not import Inductor to ask.
    """
    import torch._inductor
    import torch._inductor.config

    if not hasattr(torch._inductor, "aoti_compile_and_package"):
        return f"torch {torch.__version__} cannot build AOTInductor packages (torch >= 2.6 can)"
    if not hasattr(torch._inductor.config.cpp, "dynamic_threads"):
        return f"torch {torch.__version__}'s Inductor would bake the thread count into the package"
    return None


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
        "chunk": chunk,
        "module": type(module).__qualname__,
        "source": _source_digest(module),  # a changed forward must never load an old package
    }
    digest.update(json.dumps(build, sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The bytes of a tensor's values, copied from its CPU memory (no numpy: torch alone must do)."""
    tensor = tensor.detach().cpu().contiguous()
    return ctypes.string_at(tensor.data_ptr(), tensor.nbytes) if tensor.nbytes else b""


def _build(module: nn.Module, chunk: int, target: Path) -> None:
    """Export ``module`` with batch 1..``chunk`` and compile it with AOTInductor into ``target``."""
    import torch._inductor.config

    batch = torch.export.Dim("batch", min=1, max=chunk)
    example = torch.zeros(chunk, 3, *INPUT_SIZE).contiguous(memory_format=torch.channels_last)
    # Freezing makes the weights constants, prepacked for oneDNN's convolutions and matmuls; Inductor
    # applies it only where autograd is off, so the compile call needs no_grad as much as the export.
    # Dynamic threads: the loops follow torch.get_num_threads() of the process that runs them (the
    # thread count is no part of the package key; why_no_build refuses an Inductor without the option).
    with torch.no_grad(), torch._inductor.config.patch({"freezing": True, "cpp.dynamic_threads": True}):
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
            warn(f"compiled package {path} could not be loaded ({error}); rebuilding it", CacheWarning)
            path.unlink(missing_ok=True)
        return None


def _package_path(module: nn.Module, chunk: int) -> Path:
    return compiled_cache_dir() / f"tiniest-{package_key(module, chunk)[:32]}.pt2"


def load_cached(module: nn.Module, chunk: int) -> Runner | None:
    """The package for ``module`` if this machine has already built it, else None; never builds."""
    return _load(_package_path(module, chunk))


def load_or_build(module: nn.Module, chunk: int) -> Runner:
    """The cached package for ``module``, building it first if this machine has none.

    A build is announced in one log line (a warning, so that it shows without logging set up) once
    this process holds the lock and knows it builds: it takes tens of seconds, and the caller would
    otherwise see a silent pause. A process that waits for a peer's build is told so by the lock.
    Raises whatever export or compilation raises; the caller decides on a fallback (and asks
    :func:`why_no_build` first where a build cannot even start).
    """
    target = _package_path(module, chunk)
    folder = target.parent
    runner = _load(target)
    if runner is not None:
        return runner
    with writer_lock(folder / ".locks" / f"{target.name}.lock", LOCK_TIMEOUT_S) as access:
        runner = _load(target, remove_broken=access == "locked")  # a peer may have built it meanwhile
        if runner is not None:
            return runner
        # Measured: 26-28 s on 2 idle cores, 60-85 s on 2 busy ones.
        logger.warning(
            "tiniest: compiling the fast model for these weights, once per machine (about 30 s on 2 idle cores, "
            "longer on a busy machine); later runs load it from %s",
            folder,
        )
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
    with tempfile.TemporaryDirectory(prefix="tiniest-check-") as scratch:
        cases = Path(scratch) / "cases.pt"
        torch.save({"inputs": inputs, "expected": expected}, cases)
        command = [*_isolated_python(), os.fspath(path), os.fspath(cases), str(torch.get_num_threads())]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the compiled package failed its check: no answer in {CHECK_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        if done.returncode < 0:
            reason = f"the child process was killed by {signal.Signals(-done.returncode).name}"
        else:
            reason = (done.stdout.strip() or done.stderr.strip() or f"exit status {done.returncode}").splitlines()[-1]
        raise RuntimeError(f"the compiled package failed its check in a child process: {reason}")


def _isolated_python() -> list[str]:
    """The child's command line, up to its arguments: this interpreter, this ``tiniest``, this torch, nothing else.

    ``-I`` keeps the working directory, ``PYTHONPATH`` and the user's site packages off ``sys.path``
    (a ``tiniest/`` folder where the caller stands must not run, let alone fake the check); the
    parent's ``tiniest`` goes first on the path, and its torch's folder is added should it lie in a
    place ``-I`` leaves out. The child verifies that it imported exactly these two.
    """
    package_root = Path(__file__).resolve().parents[2]  # also works from a checkout that is not installed
    torch_root = Path(torch.__file__).resolve().parents[1]
    bootstrap = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "sys.path.append(sys.argv[2]) if sys.argv[2] not in sys.path else None; "
        "from tiniest.fast._package_check import main; sys.exit(main(sys.argv[1:]))"
    )
    return [sys.executable, "-I", "-c", bootstrap, os.fspath(package_root), os.fspath(torch_root)]


def _loaded(path: Path) -> Runner:
    runner = _load(path)
    if runner is None:
        raise RuntimeError(f"AOTInductor built {path} but it could not be loaded")
    return runner
