"""Crash-safe file writes, for every file a run, a build or a report writes.

:func:`replace_atomically` writes to a temporary file in the target's folder, flushes it to
disk (``fsync``), renames it over the target (atomic on POSIX) and syncs the folder, so that
after a kill or a power cut the target holds either its old bytes or its new ones, never a
mixture. A kill mid-write leaves at worst a stray ``.<name>.<random>.tmp`` beside it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["fsync_path", "replace_atomically", "save_figure", "write_atomic"]

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process's umask (there is no getter), then restore it


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) from the OS cache to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a fresh temporary file beside ``path``, fsync it, rename it to
    ``path`` and fsync the folder. ``write`` receives a path whose suffix is ``path``'s, so
    writers that choose a format by suffix (``savefig``) still do. The temporary file is
    removed if ``write`` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # the mode a plain open() gives, not mkstemp's 0600
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`replace_atomically`)."""
    return replace_atomically(path, lambda tmp: tmp.write_text(text))


def save_figure(fig, path: str | Path, **kwargs) -> Path:
    """``fig.savefig(path, **kwargs)``, atomically; the format follows ``path``'s suffix."""
    return replace_atomically(path, lambda tmp: fig.savefig(tmp, **kwargs))
