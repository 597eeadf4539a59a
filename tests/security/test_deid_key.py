"""Issue 8 §6: the pseudonym key is refused, with an explanation, when others can read it, when
it is short or not random, or when ``base.secret_key_path`` points at a link or a system file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.data import deid, ingest
from pipeline.errors import SecretError
from tests.conftest import SmallCohort, build_params

GOOD = bytes(range(100, 132))


def _key(path: Path, data: bytes, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(("mode", "what"), [(0o644, "world"), (0o640, "group"), (0o604, "other")])
def test_a_key_others_can_read_is_refused(tmp_path: Path, mode: int, what: str) -> None:
    key = _key(tmp_path / ".radops/pseudonym.key", GOOD, mode)
    with pytest.raises(SecretError, match=r"readable by other users.*chmod 600"):
        deid.load_or_create_key(key)
    key.chmod(0o600)
    assert deid.load_or_create_key(key) == GOOD


@pytest.mark.parametrize(
    ("data", "match"),
    [(b"short key", "at least 32"), (b"\0" * 32, "almost no entropy"),
     (b"a" * 64, "almost no entropy"), (b"abab" * 16, "almost no entropy")],
)  # fmt: skip
def test_a_short_or_made_up_key_is_refused(tmp_path: Path, data: bytes, match: str) -> None:
    key = _key(tmp_path / "pseudonym.key", data, 0o600)
    with pytest.raises(SecretError, match=match):
        deid.load_or_create_key(key)


def test_a_key_path_that_is_a_link_or_a_system_file_is_refused(tmp_path: Path) -> None:
    real = _key(tmp_path / "real.key", GOOD, 0o600)
    os.symlink(real, tmp_path / "link.key")
    with pytest.raises(SecretError, match="symbolic link"):
        deid.load_or_create_key(tmp_path / "link.key")
    with pytest.raises(SecretError, match=r"another user|readable by other users"):
        deid.load_or_create_key("/etc/passwd")
    with pytest.raises(SecretError):
        deid.load_or_create_key(tmp_path)  # a folder


def test_ingest_refuses_an_unsafe_key_before_writing_anything(
    small_cohort: SmallCohort, tmp_path: Path
) -> None:
    params = build_params(tmp_path, base={"secret_key_path": "/etc/passwd"})
    paths = ingest.Paths(small_cohort.dicom_dir, small_cohort.labels_csv, tmp_path / "out")
    with pytest.raises(SecretError) as info:
        ingest.run(params, paths)
    assert info.value.exit_code == 8 and not (tmp_path / "out").exists()


def test_a_new_key_is_random_private_and_accepted(tmp_path: Path) -> None:
    a = deid.load_or_create_key(tmp_path / "a/pseudonym.key")
    b = deid.load_or_create_key(tmp_path / "b/pseudonym.key")
    assert a != b and len(a) == 32 and len(set(a)) >= deid.MIN_DISTINCT_BYTES
    assert (tmp_path / "a/pseudonym.key").stat().st_mode & 0o777 == 0o600
