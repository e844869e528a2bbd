"""Opening the files people name, which may not be files at all.

A FIFO named ``x.png`` blocks ``open`` until some writer comes (forever, often); a folder, a
device or a socket named like an image or a dataset batch is not one either. ``open_regular``
opens regular files only (a symlink to one included) and never blocks: the name is checked with
``stat`` before it is opened (so no device is ever opened), and the opened descriptor again with
``fstat`` (so a file swapped in between is caught too).
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

__all__ = ["open_regular", "read_regular"]

_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _refuse_unless_regular(mode: int, name: str) -> None:
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a file")
        raise OSError(f"{name!r} is {kind}, not a regular file")


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for binary reading; an ``OSError`` saying what it is when it is not a regular file."""
    name = os.fspath(path)
    _refuse_unless_regular(os.stat(name).st_mode, name)
    # O_NONBLOCK: a FIFO put in place after the stat above must not block the open either.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(name, flags)
    try:
        _refuse_unless_regular(os.fstat(descriptor).st_mode, name)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of the regular file ``path``; an ``OSError`` when it holds more than ``limit``.

    The buffer is sized by the file, not by ``limit`` (``read(n)`` allocates ``n`` bytes first).
    """
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(min(size, limit) + 1)
    if len(data) > limit:
        raise OSError(f"{os.fspath(path)!r} holds more than {limit:,} bytes")
    return data
