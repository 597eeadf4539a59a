"""Issue 21 §6: a SEG that highdicom cannot parse is quarantined with what is wrong (the
attributes it lacks, the reader's exception type and the keywords it names), never with the
reader's message itself (a path, a UID or another header value)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
import pytest

from pipeline import catalog
from pipeline.data import ingest, seg_io
from pipeline.data.deid import SYNTHETIC_KEY


def _good_seg(dicom_dir: Path) -> Path:
    return next(
        p
        for p in sorted(dicom_dir.rglob("*"))
        if p.is_file()
        and "/SG0" in p.as_posix()
        and pydicom.dcmread(p).SegmentationType == "BINARY"
    )


def _broken(src: Path, dst: Path, *missing: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(src)
    for keyword in missing:
        delattr(ds, keyword)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)
    return ds


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        (("DimensionIndexSequence",), "missing DimensionIndexSequence; KeyError (ReferencedSegmentNumber)"),
        (("SharedFunctionalGroupsSequence",), "missing SharedFunctionalGroupsSequence; AttributeError"),
        (("PixelData",), "missing PixelData; AttributeError"),
    ],
)  # fmt: skip
def test_the_reason_says_what_is_missing(
    small_cohort: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    missing: tuple[str, ...],
    expected: str,
) -> None:
    path = tmp_path / "Okafor_Chidi_19580311" / "seg.dcm"  # a path that identifies someone
    ds = _broken(_good_seg(small_cohort.dicom_dir), path, *missing)
    with caplog.at_level(logging.DEBUG), pytest.raises(seg_io.SegError) as info:
        seg_io.read_seg(str(path))
    reason = info.value.reason
    assert reason == f"{seg_io.UNREADABLE}: {expected}"
    for value in ("Okafor", "1958", str(ds.SOPInstanceUID), str(ds.PatientID), "2.25."):
        assert value not in reason


def test_highdicom_warnings_quoting_uids_are_not_logged(
    small_cohort: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "seg.dcm"
    ds = _broken(_good_seg(small_cohort.dicom_dir), path, "ReferencedSeriesSequence")
    with caplog.at_level(logging.DEBUG):
        seg_io.read_seg(str(path))  # readable (it references nothing usable: an orphan later)
    source = ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    uid = str(source.SourceImageSequence[0].ReferencedSOPInstanceUID)
    assert uid not in caplog.text and "2.25." not in caplog.text


def test_ingest_quarantines_it_with_that_reason(small_cohort: Any, tmp_path: Path) -> None:
    src = tmp_path / "dicom"
    shutil.copytree(small_cohort.dicom_dir, src)
    _broken(_good_seg(src), src / "extra/seg.dcm", "PerFrameFunctionalGroupsSequence")
    ingest.ingest_folder(src, tmp_path / "out", SYNTHETIC_KEY)
    reasons = pd.read_csv(tmp_path / "out" / catalog.QUARANTINE_FILE)["reason"]
    mine = [r for r in reasons if r.startswith(seg_io.UNREADABLE)]
    assert mine == [f"{seg_io.UNREADABLE}: missing PerFrameFunctionalGroupsSequence; RuntimeError"]
