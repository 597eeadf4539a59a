"""Issue 21 §7: ``source_id`` comes from the exact bytes of a file's relative path, so a name
holding an undecodable byte and a name spelling that byte's escape get different ids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data import deid, ingest
from tests.conftest import write_dicom

KEY = bytes(range(32))


def test_a_raw_byte_and_its_escaped_text_get_different_ids(tmp_path: Path) -> None:
    root = tmp_path / "in"
    write_dicom(root / "scan\\xe9_07.dcm", np.zeros((16, 16), np.int16))  # a backslash, text
    raw = os.path.join(os.fsencode(root), b"scan\xe9_07.dcm")  # Latin-1 e-acute: not UTF-8
    try:
        write_dicom(Path(os.fsdecode(raw)), np.ones((16, 16), np.int16))
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    result = ingest.ingest_folder(root, tmp_path / "out", KEY)
    manifest = pd.read_parquet(tmp_path / "out/manifest.parquet")
    assert result.files_ingested == 2 and manifest["source_id"].nunique() == 2
    assert len(result.sources) == 2  # each id keeps its way back to its own file ...
    assert sorted(result.sources.values()) == [
        "scan\\\\xe9_07.dcm",  # the name holding a backslash, shown doubled
        "scan\\xe9_07.dcm",  # the name holding the byte 0xe9
    ]  # ... told apart
    pseudo = deid.Pseudonymizer(KEY)
    expected = {pseudo.source("scan\\xe9_07.dcm"), pseudo.source(os.fsdecode(b"scan\xe9_07.dcm"))}
    assert set(manifest["source_id"]) == expected


def test_ids_of_ordinary_names_are_unchanged() -> None:
    import hashlib
    import hmac

    pseudo = deid.Pseudonymizer(KEY)
    for rel in ("a/b.dcm", "Müller/ß.dcm", "日本/画像.dcm"):
        mac = hmac.new(KEY, ("source:" + rel).encode("utf-8"), hashlib.sha256).hexdigest()
        assert pseudo.source(rel) == "F-" + mac[:16]
