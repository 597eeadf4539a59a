"""Issue 21 §6: a full disk while the pseudonym key is created leaves no key file (not a
0-byte one that blocks every later run) and a readable error; the next run creates the key."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.data import deid
from pipeline.errors import SecretError


class _FullDisk:
    """What ``os.fdopen`` returns on a full disk: writes fail with ENOSPC."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def test_a_full_disk_leaves_no_key_and_the_next_run_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "state/.radops/team.key"
    real = os.fdopen
    with monkeypatch.context() as m:
        m.setattr(os, "fdopen", lambda fd, *a, **k: _FullDisk(real(fd, *a, **k)))
        with pytest.raises(SecretError, match="No space left on device") as info:
            deid.load_or_create_key(key)
    assert "nothing was left" in str(info.value)
    assert not key.exists() and not key.is_symlink()
    assert list(key.parent.iterdir()) == []  # no temporary file either
    made = deid.load_or_create_key(key)  # the disk has room again: a normal run
    assert len(made) == deid.KEY_BYTES and key.read_bytes() == made
    assert key.stat().st_mode & 0o777 == 0o600
    assert deid.load_or_create_key(key) == made  # kept, not replaced


def test_an_existing_key_is_never_replaced(tmp_path: Path) -> None:
    from pipeline.secrets import create_private

    key = tmp_path / "k.key"
    assert create_private(key, bytes(range(32)))
    assert not create_private(key, bytes(range(1, 33)))
    assert key.read_bytes() == bytes(range(32))
    assert [p.name for p in tmp_path.iterdir()] == ["k.key"]
