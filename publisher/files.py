"""Reading files that anyone could have put there: regular files only, never blocking.

A FIFO named like an article (or like the token file) would block ``open()`` until a writer
appears, which for a service means forever; a character device such as ``/dev/zero`` never
ends; opening some devices has effects of its own. So a file is looked at before it is
opened, opened non-blocking, checked again on the open descriptor (the name may have been
swapped in between), and read up to a limit.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_READ_CHUNK = 64 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class NotRegularFile(OSError):
    """The path names something other than a regular file; ``kind`` says what."""

    def __init__(self, kind: str) -> None:
        super().__init__(errno.EINVAL, f"not a regular file ({kind})")
        self.kind = kind


class FileTooLarge(Exception):
    """The file holds more than the limit; ``size`` is how much (its ``fstat`` size, or what
    was read when it grew while being read)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size:,} bytes; the limit is {limit:,}")
        self.size = size
        self.limit = limit


def file_kind(mode: int) -> str:
    """What a stat mode describes, in words."""
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    )
    return next((label for test, label in kinds if test(mode)), "a special file")


def read_regular_file(path: Path | str, limit: int) -> bytes:
    """The bytes of the regular file at ``path``; ``FileTooLarge`` (with the file's size)
    when it holds more than ``limit``, of which no more than ``limit + 1`` are read;
    ``NotRegularFile`` for anything else, without opening it; ``OSError`` when it cannot be
    read."""
    before = os.stat(path)
    if not stat.S_ISREG(before.st_mode):
        raise NotRegularFile(file_kind(before.st_mode))
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket (or a FIFO's peer) swapped in since the stat
            raise NotRegularFile(file_kind(os.stat(path).st_mode)) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(file_kind(info.st_mode))
        if info.st_size > limit:
            raise FileTooLarge(info.st_size, limit)
        data = _read_at_most(fd, limit, info.st_size)
        if len(data) > limit:  # it grew since the fstat
            raise FileTooLarge(max(os.fstat(fd).st_size, len(data)), limit)
        return data
    finally:
        os.close(fd)


def _read_at_most(fd: int, limit: int, size: int) -> bytes:
    """Up to ``limit + 1`` bytes: the first read asks for the size the file had (plus one,
    so that a file of exactly that size needs no buffer beyond it), later ones in chunks,
    so a small file never costs a buffer of ``limit`` bytes."""
    parts: list[bytes] = []
    total = 0
    request = min(size, limit) + 1
    while total <= limit:
        chunk = os.read(fd, request)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        request = min(limit + 1 - total, _READ_CHUNK)
    return parts[0] if len(parts) == 1 else b"".join(parts)
