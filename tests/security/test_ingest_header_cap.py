"""Issue 21 §7: a huge private element is never read whole. The header (everything but the
pixel data) is capped like the pixel size (``ingest.max_header_mb``): a file past the cap is
quarantined with a reason that says so, whether the element comes before or after the pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import IngestSection
from pipeline.data import ingest, safe_read
from tests.conftest import write_dicom

KEY = bytes(range(32))
MB = 1_000_000


def _with_private(path: Path, group: int, nbytes: int) -> None:
    ds = write_dicom(path, np.arange(256, dtype=np.int16).reshape(16, 16))
    ds.add_new((group, 0x0010), "LO", "RADOPS TEST VENDOR")  # private creator
    ds.add_new((group, 0x1001), "OB", bytes(nbytes))
    ds.save_as(path, enforce_file_format=True)


def test_a_header_past_the_cap_is_quarantined_unread(tmp_path: Path, monkeypatch: Any) -> None:
    assert IngestSection().max_header_mb == 64
    _with_private(tmp_path / "in/a_big_private.dcm", 0x0029, 3 * MB)
    _with_private(tmp_path / "in/b_trailing_private.dcm", 0x7FE1, 3 * MB)  # after the pixels
    _with_private(tmp_path / "in/c_small_private.dcm", 0x0029, MB // 5)
    read: list[int] = []
    real_open = safe_read.open_inside

    class Counting:
        def __init__(self, fh: Any) -> None:
            self._fh = fh

        def read(self, size: int = -1) -> bytes:
            data = self._fh.read(size)
            read.append(len(data))
            return data

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self._fh.close()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._fh, name)

    monkeypatch.setattr(safe_read, "open_inside", lambda p, r: Counting(real_open(p, r)))
    result = ingest.ingest_folder(tmp_path / "in", tmp_path / "out", KEY, max_header_mb=1)
    reason = "header larger than 1 MB (ingest.max_header_mb; not read)"
    assert result.reasons == {reason: 2}
    assert result.files_ingested == 1  # the 0.2 MB private element is within the cap
    assert sum(read) < MB  # the 0.2 MB one read whole, the others only up to their big element


def test_the_default_cap_reads_large_headers(tmp_path: Path) -> None:
    _with_private(tmp_path / "in/big.dcm", 0x0029, 3 * MB)
    result = ingest.ingest_folder(tmp_path / "in", tmp_path / "out", KEY)
    assert result.files_ingested == 1 and result.quarantined == 0
