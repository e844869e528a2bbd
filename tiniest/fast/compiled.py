"""An ahead-of-time compiled ``FastTiniest``, built once per machine and cached.

``torch.compile`` forgets its work when the process ends, and Inductor's on-disk cache skips
graphs whose weights are frozen into constants, so every ``tiniest evaluate`` would compile for
20-40 s again. Instead the inference graph is exported and compiled by AOTInductor into ``.pt2``
packages: a shared library plus the frozen, prepacked weights. There are two per model: one with a
symbolic batch (1 to ``chunk`` images) for batches, and one for exactly one image, whose
convolution weights are prepacked for that shape once at build time rather than reordered on
every call (measured on 2 cores: 10 % less CPU per picture on one thread, 19 % on two). Each is
stored in ``compiled_cache_dir`` under a key of everything its build depends on (weights, module
source, torch version, CPU, compiler, batch sizes); later processes load them in milliseconds.
Their parallel loops ask OpenMP for the caller's thread count at run time, so one package serves
``torch.set_num_threads(1)`` as well as the default. Builds run under a file lock and land by
atomic rename, so concurrent processes build once and no reader sees half a package. A new
package is first run in a child process on every batch size it serves (``check_in_child``): a bad
one crashes that child, not the caller, and is never cached.

Loading a package runs native code, so a package is loaded only if this user built it: its
folder must be this user's and writable by no one else (a new one is made ``0o700``), and its
bytes must match the sha256 that the build wrote beside it (``<package>.sha256``, also this
user's, also writable by no one else). A folder in ``/tmp`` or a group's scratch space, a package
someone changed or planted, one without a record: each is refused with one warning and rebuilt
(or the eager module runs), never loaded. The folder's parents are not checked. Temporary build
folders of builders that were killed are removed by the next build (see
``tiniest.storage.remove_stale_parts``).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import inspect
import json
import logging
import os
import platform
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from torch import nn

from tiniest.env import env_path, env_text
from tiniest.errors import CacheWarning, warn
from tiniest.storage import PART_SUFFIX, cache_dir, remove_stale_parts, writer_lock
from tiniest.transforms import Preprocess, preprocess_for

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
# 5: each package has a sha256 record beside it (packages of format 4 had none: not loadable now).
PACKAGE_FORMAT = 5
# The record of a package's sha256, written by the build beside the package: ``<package>.sha256``.
RECORD_SUFFIX = ".sha256"
# A peer's build takes tens of seconds; wait this long before building alongside it.
LOCK_TIMEOUT_S = 600.0
# The child process that tries a new package: interpreter start, torch import, load and 15 calls.
CHECK_TIMEOUT_S = 300.0


def compiled_cache_dir() -> Path:
    """``$TINIEST_COMPILED_CACHE``, else ``$TINIEST_CACHE/compiled`` (see ``tiniest.storage.cache_dir``)."""
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
    serves every thread count and ``package_key`` need not import Inductor to ask.
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


def _input_of(module: nn.Module) -> Preprocess:
    """The input contract ``module``'s weights state (``module.meta``; default ``PREPROCESSING``)."""
    return preprocess_for(getattr(module, "meta", None))


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
        "input_size": list(_input_of(module).size),  # the package trusts its input's shape
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
    """Export ``module`` for batches of 1..``chunk`` (only 1 if ``chunk`` is 1), built by AOTInductor in ``target``."""
    import torch._inductor.config

    example = torch.zeros(chunk, 3, *_input_of(module).size).contiguous(memory_format=torch.channels_last)
    batch = ({0: torch.export.Dim("batch", min=1, max=chunk)},) if chunk > 1 else None
    # Freezing makes the weights constants, prepacked for oneDNN's convolutions and matmuls; Inductor
    # applies it only where autograd is off, so the compile call needs no_grad as much as the export.
    # Dynamic threads: the loops follow torch.get_num_threads() of the process that runs them (the
    # thread count is no part of the package key; why_no_build refuses an Inductor without the option).
    with torch.no_grad(), torch._inductor.config.patch({"freezing": True, "cpp.dynamic_threads": True}):
        program = torch.export.export(module, (example,), dynamic_shapes=batch)
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


class _Refused(Exception):
    """A file or folder this user's build did not make, or that others could have changed: one clause why."""


def _check_private(info: os.stat_result) -> None:
    """Raise ``_Refused`` unless ``info`` is of something this user owns and no one else can write.

    Where there are no POSIX owners (Windows), only the sha256 record vouches for a package.
    """
    if not hasattr(os, "geteuid"):
        return
    if info.st_uid != os.geteuid():
        raise _Refused(f"owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _Refused(f"writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})")


def _private_folder(folder: Path, *, create: bool) -> bool:
    """Whether packages may be loaded from (and built into) ``folder``; warns once where not.

    ``create``: make it first, ``0o700``, if absent (a folder that cannot be made is left to the
    writer lock, which says why). An absent folder holds nothing to load: True.
    """
    if create:
        with suppress(OSError):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        info = os.stat(folder)
    except OSError:
        return True
    if not stat.S_ISDIR(info.st_mode):
        return True  # nothing loads from a file; the writer lock reports it if a build is wanted
    try:
        _check_private(info)
    except _Refused as refused:
        _warn_once(
            f"not using the compiled-package cache {folder}: it is {refused}; expected a folder of this user's "
            "that no one else can write (chmod go-w it, or set TINIEST_COMPILED_CACHE)"
        )
        return False
    return True


def _private_bytes(path: Path, *, limit: int | None = None) -> bytes:
    """The bytes of ``path``, read through one handle that was checked: a regular file (no link), private.

    Raises FileNotFoundError if it is absent, ``_Refused`` if it is not to be trusted, or more
    than ``limit`` bytes.
    """
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        if error.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise _Refused("a symbolic link") from None
        raise
    with os.fdopen(handle, "rb") as file:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            raise _Refused("not a regular file")
        _check_private(info)
        if limit is not None and info.st_size > limit:
            raise _Refused(f"{info.st_size} bytes long, expected at most {limit}")
        return file.read()


def _record_of(package: Path) -> Path:
    return package.with_name(package.name + RECORD_SUFFIX)


def _check_package(path: Path) -> None:
    """Raise ``_Refused`` unless ``path`` holds the bytes this user's build recorded beside it."""
    record = _record_of(path)
    try:
        expected = _private_bytes(record, limit=256).decode("ascii", "replace").strip()
    except FileNotFoundError:
        raise _Refused(f"no record of its sha256 beside it ({record.name}, written by this user's build)") from None
    except _Refused as refused:
        raise _Refused(f"its sha256 record {record.name} is {refused}") from None
    try:
        found = hashlib.sha256(_private_bytes(path)).hexdigest()
    except _Refused as refused:
        raise _Refused(f"it is {refused}") from None
    if found != expected:
        raise _Refused(f"its sha256 is {found}, expected {expected[:64]!r} (its record, written at its build)")


def _seal(package: Path) -> None:
    """Make a freshly built ``package`` private (``0o600``) and write its sha256 record beside it, ``0o600`` too."""
    os.chmod(package, 0o600)
    digest = hashlib.sha256(package.read_bytes()).hexdigest()
    handle = os.open(_record_of(package), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(handle, "w", encoding="ascii") as out:
        out.write(digest + "\n")


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """One ``CacheWarning`` per problem and process: the cache is looked at several times per ``optimize``."""
    if message not in _warned:
        _warned.add(message)
        warn(message, CacheWarning)


def _load(path: Path, *, remove_broken: bool = False) -> Runner | None:
    """The package at ``path``, or None if it is absent, not this user's build, or unreadable (warned once).

    ``remove_broken`` (only under the writer lock, so no peer's fresh package is hit): delete a
    package that is refused, and its record, so that it gets rebuilt.
    """
    if not os.path.lexists(path):
        return None
    try:
        _check_package(path)
        return open_package(path)
    except FileNotFoundError:  # removed since: a peer replacing it
        return None
    except _Refused as refused:
        reason = str(refused)
    except Exception as error:  # a foreign or damaged file that matches its record: rebuild rather than fail
        reason = f"it could not be loaded ({error})"
    _warn_once(f"not loading the compiled package {path}: {reason}")
    if remove_broken:
        for stale in (path, _record_of(path)):
            try:
                stale.unlink(missing_ok=True)
            except OSError as error:
                logger.info("could not remove %s: %s", stale, error)
    return None


def _package_path(module: nn.Module, chunk: int) -> Path:
    return compiled_cache_dir() / f"tiniest-{package_key(module, chunk)[:32]}.pt2"


def _sizes(chunk: int) -> tuple[int, ...]:
    """The packages a model gets: batches of 1..``chunk``, and exactly one image (see the module's docstring)."""
    return (chunk, 1) if chunk > 1 else (1,)


def _by_batch(runners: dict[int, Runner]) -> Runner:
    """One runner for both packages: a single image goes to the one built for it, any other batch to the chunk's."""
    if len(runners) == 1:
        (runner,) = runners.values()
        return runner
    single, batches = runners[1], runners[max(runners)]
    return lambda x: single(x) if x.shape[0] == 1 else batches(x)


def load_cached(module: nn.Module, chunk: int) -> Runner | None:
    """The packages for ``module`` if this user has already built them here, else None; never builds."""
    if not _private_folder(compiled_cache_dir(), create=False):
        return None
    runners = {}
    for size in _sizes(chunk):
        runner = _load(_package_path(module, size))
        if runner is None:
            return None
        runners[size] = runner
    return _by_batch(runners)


def load_or_build(module: nn.Module, chunk: int) -> Runner:
    """The cached packages for ``module``, building first those this user has not built here.

    A build is announced in one log line (a warning, so that it shows without logging set up) once
    this process holds the lock and knows it builds: it takes tens of seconds, and the caller would
    otherwise see a silent pause. A process that waits for a peer's build is told so by the lock.
    Where the cache folder is not this user's alone, or cannot be written, the packages are built in
    a private temporary folder, loaded, and not kept.
    Raises whatever export or compilation raises; the caller decides on a fallback (and asks
    ``why_no_build`` first where a build cannot even start).
    """
    announced: list[str] = []

    def announce(where: str) -> None:
        if not announced:
            announced.append(where)
            _announce_build(where)

    return _by_batch({size: _load_or_build_one(module, size, announce) for size in _sizes(chunk)})


def _load_or_build_one(module: nn.Module, chunk: int, announce: Callable[[str], None]) -> Runner:
    """``load_or_build`` for the one package that serves batches of 1..``chunk``."""
    target = _package_path(module, chunk)
    folder = target.parent
    if _private_folder(folder, create=True):
        runner = _load(target)
        if runner is not None:
            return runner
        with writer_lock(folder / ".locks" / f"{target.name}.lock", LOCK_TIMEOUT_S) as access:
            if access == "locked":
                remove_stale_parts(folder, folders=True)  # the build folders of builders that were killed
            runner = _load(target, remove_broken=access == "locked")  # a peer may have built it meanwhile
            if runner is not None:
                return runner
            if access != "unusable":
                announce(f"later runs load it from {folder}")
                return _build_into(folder, module, chunk, target)
    announce("it is not kept: the cache folder cannot be used")
    with tempfile.TemporaryDirectory(prefix="tiniest-compiled-") as scratch:
        package = Path(scratch) / target.name
        _build_checked(module, chunk, package)
        return _loaded(package)


def _announce_build(where: str) -> None:
    # Measured: 37 s on 2 idle cores for both packages (26-28 s for the first alone; 60-85 s on 2 busy cores).
    logger.warning(
        "tiniest: compiling the fast model for these weights, once per machine (about 40 s on 2 idle cores, "
        "longer on a busy machine); %s",
        where,
    )


def _build_into(folder: Path, module: nn.Module, chunk: int, target: Path) -> Runner:
    """Build in a temporary folder beside ``target``, then rename the record and the package into place.

    The temporary folder (``.<name>.<random>.part``) is locked while the build runs, so that a
    later build knows it is stale once its builder is dead. The record goes first: a reader between
    the two renames finds a record and no package, which reads as "not built yet".
    """
    scratch_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=PART_SUFFIX, dir=folder))
    try:
        with _held(scratch_dir):
            package = scratch_dir / target.name
            _build_checked(module, chunk, package)
            os.replace(_record_of(package), _record_of(target))
            os.replace(package, target)
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)
    return _loaded(target)


@contextmanager
def _held(folder: Path) -> Iterator[None]:
    """Hold an ``flock`` on ``folder`` for the block (where flock exists): "a live builder uses it"."""
    try:
        import fcntl
    except ImportError:  # Windows: stale folders are told by their age alone
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(handle)


def _build_checked(module: nn.Module, chunk: int, target: Path) -> None:
    """Build into ``target``, try it in a child process, then seal it; the caller deletes it if any step raises."""
    _build(module, chunk, target)
    check_in_child(target, module, chunk)
    _seal(target)


def check_in_child(path: Path, module: nn.Module, chunk: int) -> None:
    """Run the package at ``path`` in a child process on every batch size 1..``chunk``, against ``module``.

    Raises RuntimeError if the child crashes, hangs or disagrees (see ``tiniest.fast._package_check``),
    so that a bad package is neither cached nor loaded here.
    """
    generator = torch.Generator().manual_seed(0)
    inputs = [_input_of(module).random_input(batch, generator) for batch in range(1, chunk + 1)]
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
