"""Local secrets (pseudonym key, Prefect API auth string, credentials): one way to keep them.

A secret lives in a file under ``.radops/`` (never in git, DVC, MLflow or ``params.yaml``),
created with mode 0600 on first use. Like ssh, radops refuses a secret file that others can
read, or that is a link, and explains how to fix it; it never prints a secret's value.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from pipeline import catalog
from pipeline.errors import SecretError

# Folder for every local secret and local-only table (relative to the project root).
SECRETS_DIR = catalog.LOCAL_DIR


def check_private(path: Path) -> None:
    """Refuse a secret file that is a symlink, not a regular file, not the user's own, or
    readable by others."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise SecretError(f"secret file {path} is a symbolic link; point the setting at the file")
    if not stat.S_ISREG(info.st_mode):
        raise SecretError(f"secret file {path} is not a regular file")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise SecretError(
            f"secret file {path} belongs to another user; radops only uses secret files you own"
            " (is the setting pointing at a system file?)"
        )
    if info.st_mode & 0o077:
        raise SecretError(
            f"secret file {path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o});"
            f" run `chmod 600 {path}` if it is yours, or delete it to have a new one created"
        )


def create_private(path: Path, data: bytes) -> bool:
    """Write ``data`` to a new 0600 file; False if it already existed (theirs is kept).

    Atomic: the data go to a private temporary sibling, are flushed to disk, and only then get
    the file's name (``os.link``, which refuses an existing name, so a concurrent creator's
    file is kept). A full disk or a crash leaves no file at ``path``, never an empty or partial
    one that would block every later run; the failure is a ``SecretError`` that says why.
    """
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if not _publish(tmp, path):
            return False
        _sync_folder(path.parent)
        return True
    except OSError as exc:
        raise SecretError(
            f"could not write the new secret file {path} "
            f"({exc.strerror or type(exc).__name__}); nothing was left at that path: free disk "
            "space (or fix the folder's permissions) and run again"
        ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _publish(tmp: str, path: Path) -> bool:
    """Give the written temporary file ``tmp`` the name ``path``; False if ``path`` exists."""
    import errno

    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as exc:  # a file system without hard links: rename, after a last check
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if path.exists() or path.is_symlink():
            return False
        os.replace(tmp, path)
    return True


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (the new name) to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_private(path: Path | str) -> bytes:
    """Read a secret file after checking it is private."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise SecretError(f"secret file {path} does not exist")
    check_private(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SecretError(f"secret file {path} cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def write_private(path: Path | str, data: bytes) -> None:
    """Replace ``path`` atomically with a 0600 file holding ``data`` (a local-only table such
    as the linkage table: written to a private temporary sibling, then renamed)."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_create(path: Path | str, nbytes: int = 32, *, text: bool = False) -> bytes:
    """The secret at ``path``, created (random, 0600) on first use.

    ``text=True`` stores it as URL-safe text (for values passed in headers or environment
    variables, such as Prefect's API auth string).
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        value = secrets.token_urlsafe(nbytes) if text else None
        create_private(path, value.encode("ascii") if value else secrets.token_bytes(nbytes))
    return read_private(path)
