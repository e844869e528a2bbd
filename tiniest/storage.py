"""Where tiniest keeps files, and how it writes them: atomic writes, writer locks, cache and output folders.

Readers never lock: a file is only ever put in place whole (write a temporary file, then
``os.replace``), and every read of weights is checked against the pinned sha256 anyway. Writers take one
lock per target file (with ``filelock``, in a ``.locks`` folder beside the cache), held from "is it cached yet?" to
the atomic rename, so that processes starting together download the file once. The kernel
releases the lock of a process that dies, even by SIGKILL; empty lock files are left behind,
as ``filelock`` intends. A lock file is never followed through a symlink: one found in its place
is replaced by a plain file (else a planted link would turn the cache off for good).

A writer holds an ``flock`` on its temporary file while it writes. So the temporary file of a
writer that was killed (even by SIGKILL) is known to be stale: no process holds it. Every write
removes those of its target (``remove_stale_parts``); on a system without ``flock`` (Windows)
only those older than a day are.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from tiniest.env import env_path
from tiniest.errors import CacheWarning, UsageError, warn

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CACHE_ERRNOS",
    "HF_PREFIX",
    "PART_SUFFIX",
    "cache_dir",
    "check_output_folder",
    "remove_stale_parts",
    "save_atomically",
    "writer_lock",
]

PART_SUFFIX = ".part"
# A temporary file no process holds is stale once this old (it is locked microseconds after its creation)...
STALE_SECONDS = 60.0
# ...and where flock does not exist, once this old.
STALE_SECONDS_UNLOCKED = 24 * 3600.0
# errnos that say "this directory cannot hold the file" rather than "the download failed"
CACHE_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST, errno.EFBIG}
)
# The scheme of a Hugging Face Hub dataset given as a location: hf://owner/name[@revision]
HF_PREFIX = "hf://"

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$TINIEST_CACHE``, else ``$XDG_CACHE_HOME/tiniest``, else ``~/.cache/tiniest``."""
    configured = env_path("TINIEST_CACHE")
    if configured is not None:
        return configured
    return (env_path("XDG_CACHE_HOME") or Path.home() / ".cache") / "tiniest"


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
            if fcntl is not None:  # held until closed (or the process dies): says "this file is being written"
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            remove_stale_parts(path.parent, path.name)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def remove_stale_parts(folder: Path, name: str | None = None, *, folders: bool = False) -> None:
    """Delete the temporary files that killed writers left in ``folder`` (those no live process holds).

    Those of the file ``name``, or of any file. Best effort: a file that cannot be removed (not ours,
    or not a file) is left for the next writer; it never stops the write that came to clean up.
    ``folders``: temporary folders too, removed whole (a compiled package's builds, each locked by its
    builder the same way); otherwise a folder is left alone.
    """
    pattern = f".{glob.escape(name) if name is not None else '*'}.*{PART_SUFFIX}"
    try:
        parts = list(folder.glob(pattern))
    except OSError:
        return
    for part in parts:
        if _is_stale(part):
            try:
                if folders and stat.S_ISDIR(part.lstat().st_mode):
                    shutil.rmtree(part)
                else:
                    part.unlink(missing_ok=True)
            except OSError as error:
                logger.info("could not remove %s, left by a writer that was stopped: %s", part, error)
            else:
                logger.info("removed %s, left by a writer that was stopped", part)


def _is_stale(part: Path) -> bool:
    try:
        handle = os.open(part, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:  # gone already, or a link: not ours
        return False
    try:
        age = time.time() - os.fstat(handle).st_mtime
        if fcntl is None:
            return age > STALE_SECONDS_UNLOCKED
        if age < STALE_SECONDS:  # (a writer locks its file right after creating it)
            return False
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return False  # a live writer holds it
        return True
    finally:
        os.close(handle)


Access = Literal["locked", "unlocked", "unusable"]


def _replace_odd_lock_file(lock_file: Path) -> None:
    """Remove a symlink (or FIFO, socket...) found where a lock file belongs; ``filelock`` then makes a plain one.

    ``filelock`` never follows a link (it fails with ELOOP), so left there it would disable the cache for good.
    A folder is left alone (the lock then fails and the cache goes unused, with a warning).
    """
    try:
        mode = os.lstat(lock_file).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    logger.warning("%s is not a plain file (a symlink?); replacing it with one", lock_file)
    lock_file.unlink(missing_ok=True)


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
        _replace_odd_lock_file(lock_file)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.warning(
                "another process is writing the file locked by %s; waiting up to %g s for it", lock_file, timeout
            )
            lock.acquire()
    except Timeout:
        warn(f"waited {timeout:g} s for {lock_file}; going on without it", CacheWarning)
        access = "unlocked"
    except OSError as error:
        warn(
            f"cannot write to the cache in {lock_file.parent.parent} ({error}); nothing is cached: what is "
            "fetched or built is loaded from memory",
            CacheWarning,
        )
        access = "unusable"
    try:
        yield access
    finally:
        if access == "locked":
            lock.release()
