"""Writing files so that a crash or interruption never leaves a half-written one behind."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Yield a file to write; on success it replaces ``path`` in one step, on error nothing is left.

    The temporary file lives in the target's folder, so ``os.replace`` is a rename on one file system
    (atomic on POSIX and Windows): readers see the old file or the new one, never a part. ``mkstemp``
    creates the file 0600; it gets the mode ``open`` would have given it (0666 less the umask), so a
    shared cache or ``grace_config.json`` stays readable by whoever could read a plainly written file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)[:32]}-", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
