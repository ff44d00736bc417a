"""Read a small file an operator gave us, safely: regular files only, bounded size, never blocking.

``cert_der.bin``, ``certificate_hash.txt`` and ``Beacon.conf.toml`` may be symlinks (a secrets
directory, a shared config), but one pointing at ``/dev/zero``, a FIFO or a directory must give
one clear line, not a ``MemoryError``, a hang or a traceback.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class SmallFileError(Exception):
    """The file cannot be used; ``str()`` is one line starting with the path."""


def describe_missing(path: Path) -> str | None:
    """``"dangling symbolic link to X"`` when ``path`` is a symlink whose target is missing."""
    try:
        if path.is_symlink() and not path.exists():
            return f"dangling symbolic link to {os.readlink(path)}"
    except OSError:
        return None
    return None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_small_file(path: Path, limit: int) -> bytes:
    """The content of ``path`` (at most ``limit`` bytes) or :class:`SmallFileError`.

    ``FileNotFoundError`` passes through for a plain missing file (callers may create it)."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: opening a FIFO without a writer must not hang
    except FileNotFoundError as exc:
        dangling = describe_missing(path)
        if dangling:
            raise SmallFileError(f"{path}: {dangling}") from exc
        raise
    except OSError as exc:
        raise SmallFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SmallFileError(f"{path}: cannot read ({_kind(info.st_mode)}, expected a regular file)")
        if info.st_size > limit:
            raise SmallFileError(f"{path}: too large ({info.st_size} bytes, at most {limit})")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # the file may grow after fstat: never read more than limit + 1
            try:
                chunk = os.read(fd, limit + 1 - size)
            except OSError as exc:
                raise SmallFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise SmallFileError(f"{path}: too large (more than {limit} bytes)")
        return b"".join(chunks)
    finally:
        os.close(fd)
