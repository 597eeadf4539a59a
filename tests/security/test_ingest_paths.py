"""Issue 8 §3: identifiers in input paths never reach an ingest output; the linkage table
(local, 0600, beside the key) is the only way back from ``source_id`` to the file."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom.uid import generate_uid

from pipeline.data import deid, ingest
from tests.conftest import build_params, write_dicom

UNKNOWN_SOP_CLASS = "1.2.826.0.1.3680043.8.498.99999"  # not a registered SOP class


def _pacs_export(root: Path) -> tuple[dict[str, str], list[str]]:
    """A PACS-style export whose paths are full of identifiers.

    Returns ({relative path: its PatientID}, identifying tokens in the paths or headers).
    """
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    files: dict[str, str] = {}
    mueller = f"Mueller_Juergen/MRN-12345/2021/03/14/{study}/{series}/{sop}.dcm"
    write_dicom(root / mueller, np.full((8, 8), 5, np.int16), PatientName="Müller^Jürgen",
                PatientID="0012345", StudyInstanceUID=study, SeriesInstanceUID=series,
                SOPInstanceUID=sop)  # fmt: skip
    files[mueller] = "0012345"
    smith = "Smith_John/15-03-2021/20220505_scan/IM0001"  # holds another patient's image
    write_dicom(root / smith, np.full((8, 8), 7, np.int16), PatientName="Doe^Jane",
                PatientID="7654321")  # fmt: skip
    files[smith] = "7654321"
    report = "Roe_Richard_report.txt"
    (root / report).write_text("free-text report, not DICOM\n")
    files[report] = ""
    odd = "Mueller_Juergen/MRN-12345/odd_object.dcm"  # unknown SOP class, no pixel data
    ds = write_dicom(root / odd, np.zeros((2, 2), np.int16), SOPClassUID=UNKNOWN_SOP_CLASS)
    ds.file_meta.MediaStorageSOPClassUID = UNKNOWN_SOP_CLASS
    del ds.PixelData
    ds.save_as(root / odd, enforce_file_format=True)
    files[odd] = "0012345"
    tokens = [
        "Mueller_Juergen", "Mueller", "Juergen", "MRN-12345", "2021/03/14", study, series, sop,
        "Smith_John", "Smith", "15-03-2021", "20220505_scan", "20220505", "IM0001",
        "Roe_Richard_report", "Roe_Richard", "Richard", "odd_object", UNKNOWN_SOP_CLASS,
    ]  # fmt: skip
    return files, tokens


def test_no_path_token_reaches_any_output_and_the_linkage_table_maps_back(
    tmp_path: Path,
) -> None:
    root = tmp_path / "export"
    files, tokens = _pacs_export(root)
    params = build_params(tmp_path)
    out = tmp_path / "ingested"
    result = ingest.run(params, ingest.Paths(input_dir=root, labels_csv=None, out_dir=out))
    assert (result.files_seen, result.files_ingested) == (4, 2)

    outputs = [p for p in out.rglob("*") if p.is_file()]
    assert {"manifest.parquet", "quarantine.csv", "summary.json"} <= {p.name for p in outputs}
    assert any(p.suffix == ".f32" for p in outputs)  # the pixel shards are searched too
    leaks = [
        (p.relative_to(out).as_posix(), token)
        for p in outputs
        for token in tokens
        if token.lower().encode() in p.read_bytes().lower()
    ]
    assert not leaks, leaks
    assert not any(t in result.summary() for t in tokens)

    manifest = pd.read_parquet(out / "manifest.parquet")
    quarantine = pd.read_csv(out / "quarantine.csv")
    assert "source_file" not in manifest.columns and list(quarantine.columns) == [
        "source_id", "reason"
    ]  # fmt: skip
    assert quarantine.set_index("source_id")["reason"].str.contains("unknown SOP class").sum() == 1

    # The way back: .radops/linkage.csv beside the key, private, rows for every input file.
    linkage_file = Path(params.base.secret_key_path).parent / "linkage.csv"
    assert linkage_file.stat().st_mode & 0o777 == 0o600
    with linkage_file.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["source_id", "source_file"]
    linkage = {r["source_id"]: r["source_file"] for r in rows}
    assert set(linkage.values()) == set(files)
    ids = set(manifest["source_id"]) | set(quarantine["source_id"])
    assert ids == set(linkage)
    pseudo = deid.Pseudonymizer(deid.load_or_create_key(params.base.secret_key_path))
    for row in manifest.itertuples():
        path = linkage[row.source_id]
        assert (root / path).is_file()
        assert row.patient_id == pseudo.patient(files[path])  # each image back to its own file
    assert result.sources == linkage  # what `radops predict` uses to show paths


def test_linkage_table_keeps_earlier_rows_and_refuses_a_readable_table(tmp_path: Path) -> None:
    params = build_params(tmp_path)
    for name in ("first", "second"):
        write_dicom(tmp_path / name / f"{name}_scan.dcm", np.zeros((4, 4), np.int16))
        paths = ingest.Paths(input_dir=tmp_path / name, labels_csv=None, out_dir=tmp_path / "o")
        ingest.run(params, paths)
    table = deid.linkage_path(params.base.secret_key_path)
    assert sorted(deid.read_linkage(table).values()) == ["first_scan.dcm", "second_scan.dcm"]
    os.chmod(table, 0o644)
    from pipeline.errors import SecretError

    before = (tmp_path / "o/manifest.parquet").read_bytes()
    write_dicom(tmp_path / "second/third_scan.dcm", np.zeros((4, 4), np.int16))
    with pytest.raises(SecretError, match="readable by other users"):
        ingest.run(params, paths)
    assert (tmp_path / "o/manifest.parquet").read_bytes() == before  # nothing published
