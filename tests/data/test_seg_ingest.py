"""DICOM SEG ingest: pairing by ReferencedSOPInstanceUID, de-identification, every quarantine
reason, and that SEG files never become image rows."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest

from pipeline import catalog
from pipeline.data import ingest, seg_io
from pipeline.data.deid import SYNTHETIC_KEY, Pseudonymizer
from pipeline.data.seg_ingest import load_mask


def _seg_files(dicom_dir: Path) -> list[Path]:
    return sorted(p for p in dicom_dir.rglob("*") if p.is_file() and "/SG" in p.as_posix())


def _ingest(src: Path, out: Path, labels: Path | None = None) -> Any:
    return ingest.ingest_folder(src, out, SYNTHETIC_KEY, labels)


@pytest.fixture(scope="module")
def ingested(small_cohort: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("seg_ingest") / "ingested"
    return out, _ingest(small_cohort.dicom_dir, out, small_cohort.labels_csv)


def test_synth_writes_a_seg_per_lesion_image_plus_broken_ones(small_cohort: Any) -> None:
    from pipeline.data.synth_seg import BROKEN

    segs = _seg_files(small_cohort.dicom_dir)
    assert len(segs) == small_cohort.result.positives + len(BROKEN)
    kinds = {pydicom.dcmread(p).SegmentationType for p in segs}
    assert kinds == {"BINARY", "FRACTIONAL"}


def test_seg_pairs_with_its_images_and_is_no_image(small_cohort: Any, ingested: Any) -> None:
    out, result = ingested
    manifest = pd.read_parquet(out / catalog.MANIFEST_FILE)
    segments = pd.read_parquet(out / catalog.SEGMENTS_FILE)
    segs = _seg_files(small_cohort.dicom_dir)
    # every file accounted for; SEGs are no manifest rows and labels still pair 1:1
    assert result.files_seen == len([p for p in small_cohort.dicom_dir.rglob("*") if p.is_file()])
    assert len(manifest) == small_cohort.result.images
    assert result.labels["matched_images"] == small_cohort.result.images
    assert result.files_ingested + result.quarantined == result.files_seen
    # each lesion image has exactly one lesion mask, each normal image none
    lesion = segments[segments["segment"] == "lesion"]
    positives = set(manifest.loc[manifest["label"] == 1, "image_id"])
    assert set(lesion["image_id"]) == positives
    assert lesion["image_id"].is_unique
    assert set(segments["segment"]) == {"lesion", "lung"}
    # masks equal the SEG frames highdicom reads for the referenced source image
    pseudo = Pseudonymizer(SYNTHETIC_KEY)
    checked = 0
    for path in segs:
        try:
            frames = seg_io.read_seg(str(path))
        except seg_io.SegError:
            continue
        for uid, masks in frames.by_source.items():
            if pseudo.uid(uid) not in set(manifest["image_id"]):
                continue  # the orphan
            rows = segments[segments["image_id"] == pseudo.uid(uid)].sort_values("segment_number")
            if len(rows) != len(masks):
                continue  # the geometry-mismatch SEG of an image that has its own SEG
            for (_, row), plane in zip(rows.iterrows(), masks, strict=True):
                np.testing.assert_array_equal(load_mask(out, row), plane)
                checked += 1
    assert checked >= len(lesion)


def test_seg_is_deidentified(small_cohort: Any, ingested: Any) -> None:
    out, _ = ingested
    phi: set[bytes] = set()
    for path in _seg_files(small_cohort.dicom_dir):
        ds = pydicom.dcmread(path)
        phi |= {
            str(ds.PatientID).encode(),
            str(ds.SOPInstanceUID).encode(),
            str(ds.StudyInstanceUID).encode(),
            str(ds.AccessionNumber).encode(),
        }
        phi |= {part.encode() for part in str(ds.PatientName).split("^") if len(part) >= 5}
        for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence:
            phi.add(str(item.ReferencedSOPInstanceUID).encode())
    assert len(phi) > 20
    for file in out.rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            leaked = [p for p in phi if p in data]
            assert not leaked, f"{file.name} holds {leaked[:3]}"


def _rewrite(src: Path, dst: Path, **changes: Any) -> None:
    ds = pydicom.dcmread(src)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)


def test_every_quarantine_reason(small_cohort: Any, tmp_path: Path) -> None:
    src = tmp_path / "dicom"
    shutil.copytree(small_cohort.dicom_dir, src)
    good = next(p for p in _seg_files(src) if "/SG0" in p.as_posix())
    new_uid = pydicom.uid.generate_uid
    _rewrite(good, src / "extra/dup/SG.dcm", SOPInstanceUID=new_uid())
    _rewrite(good, src / "extra/patient/SG.dcm", SOPInstanceUID=new_uid(), PatientID="99999999")
    _rewrite(good, src / "extra/broken/SG.dcm", SOPInstanceUID=new_uid(), SegmentSequence=None)
    result = _ingest(src, tmp_path / "out")
    quarantine = pd.read_csv(tmp_path / "out" / catalog.QUARANTINE_FILE)
    reasons = quarantine["reason"].value_counts().to_dict()
    unreadable = f"{seg_io.UNREADABLE}: missing SegmentSequence; AttributeError"  # says what
    for reason in (
        seg_io.ORPHAN,
        seg_io.GEOMETRY,
        seg_io.UNSUPPORTED,
        seg_io.DUPLICATE_SEG,
        seg_io.PATIENT_MISMATCH,
        unreadable,
    ):
        assert reasons.get(reason) == 1, (reason, reasons)
    assert result.quarantined == 6
    assert result.files_ingested + result.quarantined == result.files_seen


@pytest.mark.parametrize("spacing_mm", [0.0, 1.1])
def test_masks_are_resized_with_their_images_geometry(spacing_mm: float) -> None:
    from pipeline.data.preprocess import _finish
    from pipeline.data.seg_masks import resize_mask, to_source

    stats = {"image_size": 32, "spacing_mm": spacing_mm, "denoise": "none"}
    yy, xx = np.mgrid[:80, :80]
    mask = ((yy - 30) ** 2 + (xx - 50) ** 2 <= 12**2).astype(np.uint8)
    spacing = (0.7, 0.7)
    small = resize_mask(mask, stats, spacing)
    image = _finish(mask.astype(np.float32), stats, spacing if spacing_mm else None)
    assert set(np.unique(small)) == {0, 1}
    np.testing.assert_array_equal(small, (image > 0.5).astype(np.uint8))  # same geometry
    back = to_source(small.astype(np.float32), 80, 80, stats, spacing) > 0.5
    dice = 2 * (back & (mask > 0)).sum() / (back.sum() + mask.sum())
    assert dice > 0.85  # and back onto the source grid (predict's SEG)
