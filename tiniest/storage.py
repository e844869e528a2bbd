"""Where tiniest keeps files, and how it writes them: atomic writes, writer locks, cache and output folders.

Readers never lock: a file is only ever put in place whole (write a temporary file, then
``os.replace``), and every read of weights is checked against the pinned sha256 anyway. Writers take one
lock per target file (with ``filelock``, in a ``.locks`` folder beside the cache), held from "is it cached yet?" to
the atomic rename, so that processes starting together download the file once. The kernel
releases the lock of a process that dies, even by SIGKILL; empty lock files are left behind,
as ``filelock`` intends.
"""

from __future__ import annotations

import errno
import logging
import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from tiniest.errors import UsageError

__all__ = [
    "CACHE_ERRNOS",
    "HF_PREFIX",
    "cache_dir",
    "check_output_folder",
    "remove_stale_parts",
    "save_atomically",
    "writer_lock",
]

PART_SUFFIX = ".part"
# errnos that say "this directory cannot hold the file" rather than "the download failed"
CACHE_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST, errno.EFBIG}
)
# The scheme of a Hugging Face Hub dataset given as a location: hf://owner/name[@revision]
HF_PREFIX = "hf://"

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$TINIEST_CACHE``, else ``$XDG_CACHE_HOME/tiniest``, else ``~/.cache/tiniest``."""
    if os.environ.get("TINIEST_CACHE"):
        return Path(os.environ["TINIEST_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tiniest"


def check_output_folder(path: Path, flag: str = "--output") -> None:
    """Refuse, before any work, an output that is a file or lies where this user cannot write."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file; expected a folder (created if absent)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: {existing} is not writable by this user")


def save_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file so readers never see half of it.

    The file gets the umask's permissions (mode 0o666 filtered by it, and by default ACLs), as
    torch.hub's and huggingface_hub's downloads do: a cache shared by a group stays usable.
    ``mkstemp`` would make it 0o600, readable by its writer alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{uuid.uuid4().hex}{PART_SUFFIX}"
    handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def remove_stale_parts(path: Path) -> None:
    """Delete temporary files a killed writer left beside ``path``; call only while holding its lock."""
    for stale in path.parent.glob(f".{path.name}.*{PART_SUFFIX}"):
        stale.unlink(missing_ok=True)


Access = Literal["locked", "unlocked", "unusable"]


@contextmanager
def writer_lock(lock_file: Path, timeout: float) -> Iterator[Access]:
    """Hold ``lock_file`` for the block; yield how the cache may be used.

    ``"locked"``: ours alone. ``"unusable"``: the lock file cannot be created (read-only, full or
    impossible folder); a warning names the problem and the caller keeps its bytes in memory.
    ``"unlocked"``: a peer held the lock for ``timeout`` seconds (stuck on a slow server); the
    block runs anyway, with a warning: atomic writes keep the cache sound, at the cost of a
    second download, but the peer's temporary files must be left alone. A wait is announced in
    one log line as it begins, so that a process queued behind a peer does not look hung.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(lock_file, timeout=timeout)
    access: Access = "locked"
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.warning(
                "another process is writing the file locked by %s; waiting up to %g s for it", lock_file, timeout
            )
            lock.acquire()
    except Timeout:
        warnings.warn(f"waited {timeout:g} s for {lock_file}; going on without it", RuntimeWarning, stacklevel=3)
        access = "unlocked"
    except OSError as error:
        warnings.warn(
            f"cannot write to the cache in {lock_file.parent.parent} ({error}); nothing is cached: what is "
            "fetched or built is loaded from memory",
            RuntimeWarning,
            stacklevel=3,
        )
        access = "unusable"
    try:
        yield access
    finally:
        if access == "locked":
            lock.release()
