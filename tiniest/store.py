"""The torch.hub checkpoints cache: verified reads without a lock, locked and atomic writes.

Readers never lock: a file is only ever put in place whole (write a temporary file, then
``os.replace``), and every read is checked against the pinned sha256 anyway. Writers take one
lock per target file (with ``filelock``, in a ``.locks`` folder beside the cache), held from "is it cached yet?" to
the atomic rename, so that processes starting together download the file once. The kernel
releases the lock of a process that dies, even by SIGKILL; empty lock files are left behind,
as ``filelock`` intends.
"""

from __future__ import annotations

import errno
import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from tiniest.artifact import sha256_hex

__all__ = ["read_verified", "remove_stale_parts", "save_atomically", "writer_lock"]

PART_SUFFIX = ".part"
# errnos that say "this directory cannot hold the file" rather than "the download failed"
CACHE_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST, errno.EFBIG}
)


def read_verified(path: Path, sha256: str) -> bytes | None:
    """The bytes of ``path`` if it exists and matches ``sha256``, else None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if sha256_hex(data) == sha256 else None


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
    second download, but the peer's temporary files must be left alone.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(lock_file, timeout=timeout)
    access: Access = "locked"
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
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
