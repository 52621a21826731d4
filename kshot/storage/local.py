"""Local files for :mod:`kshot.storage`: written whole or not at all, readable by other users.

A file is written under a temporary name in its own folder (``.NAME.*.partial``) and renamed into
place, so a killed writer never leaves a truncated file under a final name; a full disk says so,
naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["PARTIAL_SUFFIX", "atomic_file", "is_partial", "raise_if_no_space", "remove_partials"]

PARTIAL_SUFFIX = ".partial"


_umask_lock = threading.Lock()


def _umask() -> int:
    """The process's umask (read from /proc where Linux offers it; else set and restored)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _no_space(error: BaseException) -> OSError | None:
    """The "no space left" error behind ``error``, if any (``torch.save`` wraps it in a
    ``RuntimeError`` that only says ``unexpected pos``)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def raise_if_no_space(error: BaseException, target: str, tmp: str) -> None:
    cause = _no_space(error)
    if cause is not None:
        raise OSError(
            cause.errno,
            f"writing {target}: no space left on device (while writing {tmp}); "
            "nothing was written there, the previous content is kept",
        ) from error


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside ``path`` that is renamed to ``path`` when the block ends cleanly.

    The file gets the mode a plain ``open`` would give it (0666 less the umask), not
    ``mkstemp``'s 0600, so that other readers of the artifact (a pod of another user) can read it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise_if_no_space(error, str(path), tmp)
        raise


def is_partial(path: Path) -> bool:
    """Whether ``path`` is the temporary file of an unfinished write."""
    return path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX)


def remove_partials(folder: Path, name_prefix: str) -> None:
    """Delete the temporary files that writers killed mid-write left in ``folder`` for files
    whose names start with ``name_prefix``. Only the folder's single writer calls it, once its own
    write completed, so every such file still there belongs to a dead process."""
    for stale in folder.glob(f".{name_prefix}*{PARTIAL_SUFFIX}"):
        stale.unlink(missing_ok=True)
