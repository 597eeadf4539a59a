"""One writer per output: a second radops process writing the same output stops at once.

``output_lock(target)`` holds an exclusive ``flock`` on ``.<name>.lock`` beside the output (in
its parent folder, like the staging folders of ``pipeline.io.atomic_path``: the output itself is
replaced as a whole at the end, so a lock inside it would be swapped away with it). The kernel
releases the lock when the process ends, however it ends, so a killed run never leaves a stale
lock: the next run locks the leftover file again. The holder removes the file when it is done;
a waiting process that locked a file removed meanwhile notices (the name no longer points at
the file it locked) and locks the new one instead.

Without ``fcntl`` (not POSIX) there is no lock: one writer at a time is then the user's care.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineBusy


def lock_path(target: Path | str) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def output_lock(target: Path | str, what: str = "radops") -> Iterator[Path]:
    """Hold the exclusive lock of ``target`` (its parent must exist) for the block; raise
    ``PipelineBusy`` (exit code 6) at once if another process holds it. ``what``: the command
    named in the error (e.g. ``ingest``)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield lock_path(target)
        return
    path = lock_path(target)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise PipelineBusy(
                f"{what}: another radops process{holder} is writing {target} (lock {path}); "
                "wait for it to finish, or write to another output folder"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed it as we locked it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still holding the lock: nobody else can hold this file
        os.close(fd)


def _holder(fd: int) -> str:
    """`` (pid N)`` from the lock file, or nothing."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {text})" if text.isdigit() else ""
