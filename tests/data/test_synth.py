"""The synth stage writes a real, reproducible, PACS-like DICOM cohort with a labels file."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from pipeline.data import synth
from tests.conftest import SmallCohort, build_params, tree_digest

LAYOUT = re.compile(r"^PA\d{6}/ST\d{6}/SE\d{6}/IM\d{6}(\.dcm)?$")


def _files(dicom_dir: Path) -> list[Path]:
    """The image files (the DICOM SEG objects beside them: tests/data/test_seg_ingest.py)."""
    return sorted(p for p in dicom_dir.rglob("*") if p.is_file() and not _is_seg(p))


def _is_seg(path: Path) -> bool:
    from pipeline.data.synth_seg import SEG_FOLDER

    return path.parent.name.startswith(SEG_FOLDER)


def _run(tmp_path: Path, name: str, **synth_args: int) -> Path:
    out = tmp_path / name
    params = build_params(tmp_path, synth={"patients": 5, "image_size": 32} | synth_args)
    synth.run(params, synth.Paths(out_dir=out))
    return out


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = _run(tmp_path, "a", seed=3)
    second = _run(tmp_path, "b", seed=3)
    other = _run(tmp_path, "c", seed=4)
    assert tree_digest(first) == tree_digest(second)
    assert tree_digest(first) != tree_digest(other)


def test_files_are_strictly_valid_ct_dicom(small_cohort: SmallCohort) -> None:
    files = _files(small_cohort.dicom_dir)
    assert len(files) == small_cohort.result.images > 16
    for path in files:
        assert path.read_bytes()[128:132] == b"DICM"
        with config.strict_reading():
            ds = pydicom.dcmread(path, force=False)
            for element in ds:  # converting every element validates every value
                assert element.value is not None or element.VR != "UI"
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert re.fullmatch(r"[A-Z]{5,}\^[A-Z]{5,}", str(ds.PatientName))
        assert re.fullmatch(r"\d{8}", ds.PatientID)
        assert re.fullmatch(r"\d{10}", ds.AccessionNumber)
        for keyword in ("PatientBirthDate", "StudyDate", "StudyTime", "InstitutionName",
                        "InstitutionAddress", "ReferringPhysicianName", "Manufacturer",
                        "ManufacturerModelName", "SliceThickness"):  # fmt: skip
            assert str(ds.data_element(keyword).value), keyword
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelRepresentation) == (64, 64, 16, 1)
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        hu = ds.pixel_array.astype(np.float32) * 1.0 - 1024.0
        assert ds.pixel_array.dtype == np.int16
        assert hu.min() >= -1024 and (hu < -900).mean() > 0.1  # air around the body
        assert ((hu > -150) & (hu < 150)).mean() > 0.08  # soft tissue


def test_cohort_is_multi_site_multi_study_and_pacs_shaped(small_cohort: SmallCohort) -> None:
    files = _files(small_cohort.dicom_dir)
    rel = [p.relative_to(small_cohort.dicom_dir).as_posix() for p in files]
    assert all(LAYOUT.match(r) for r in rel), rel[:3]
    assert any(r.endswith(".dcm") for r in rel) and not all(r.endswith(".dcm") for r in rel)
    studies: dict[str, set[str]] = defaultdict(set)
    series: dict[str, set[str]] = defaultdict(set)
    sites, makes, spacing_by_site = set(), set(), defaultdict(set)
    for path in files:
        ds = pydicom.dcmread(path)
        studies[ds.PatientID].add(ds.StudyInstanceUID)
        series[ds.StudyInstanceUID].add(ds.SeriesInstanceUID)
        sites.add(ds.InstitutionName)
        makes.add(ds.Manufacturer)
        spacing_by_site[ds.InstitutionName].add(float(ds.PixelSpacing[0]))
    assert len(studies) == 16
    assert all(1 <= len(s) <= 3 for s in studies.values())
    assert any(len(s) > 1 for s in studies.values())
    assert all(1 <= len(s) <= 2 for s in series.values())
    assert len(sites) >= 3 and len(makes) >= 3
    assert all(len(s) == 1 for s in spacing_by_site.values())  # spacing is a site property
    assert len(set().union(*spacing_by_site.values())) == len(sites)


def test_labels_file_matches_the_images(small_cohort: SmallCohort) -> None:
    with small_cohort.labels_csv.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == [
            "sop_instance_uid",
            "patient_id",
            "label",
            "grade",
            "lesion_diameter_mm",
            *synth.FINDINGS,
        ]
        rows = list(reader)
    by_uid = {r["sop_instance_uid"]: r for r in rows}
    assert len(by_uid) == len(rows) == small_cohort.result.images
    for path in _files(small_cohort.dicom_dir):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row = by_uid.pop(ds.SOPInstanceUID)
        assert row["patient_id"] == ds.PatientID
        assert row["label"] in ("0", "1")
        # grade and diameter agree with the label and with each other
        nodule, mass, large = (row[f] for f in synth.FINDINGS)
        if row["label"] == "0":
            assert (row["grade"], row["lesion_diameter_mm"]) == ("0", "")
            assert (nodule, mass, large) == ("0", "0", "0")  # no lesion, no finding
        else:
            assert {nodule, mass} == {"0", "1"}  # a nodule or a mass, never both
            assert large == ("1" if row["grade"] == "2" else "0")
            diameter = float(row["lesion_diameter_mm"])
            assert 5.0 < diameter < 150.0
            assert row["grade"] == ("1" if diameter < synth.GRADE_LARGE_MM else "2")
            # about a whole number of pixels (x 2 radius) at the header's spacing
            assert diameter / float(ds.PixelSpacing[0]) > 2 * 1.5
    assert not by_uid
    assert {r["label"] for r in rows} == {"0", "1"}
    for f in synth.FINDINGS:  # each finding present and absent in the cohort
        assert {r[f] for r in rows} == {"0", "1"}, f
    assert sum(r["label"] == "1" for r in rows) == small_cohort.result.positives


def test_labels_cluster_by_patient(tmp_path: Path) -> None:
    """A patient-level propensity: images of one patient tend to share their label."""
    out = _run(tmp_path, "cohort", patients=80, seed=11)
    labels: dict[str, list[int]] = defaultdict(list)
    with (out / "labels.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            labels[row["patient_id"]].append(int(row["label"]))
    pairs = [(a, b) for v in labels.values() for i, a in enumerate(v) for b in v[i + 1 :]]
    agree = np.mean([a == b for a, b in pairs])
    prevalence = np.mean([x for v in labels.values() for x in v])
    chance = prevalence**2 + (1 - prevalence) ** 2
    assert 0.3 < prevalence < 0.6
    assert agree > chance + 0.2


def test_grades_split_lesions_about_in_half_and_diameters_vary(tmp_path: Path) -> None:
    out = _run(tmp_path, "cohort", patients=80, seed=11, image_size=64)
    with (out / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"] == "1"]
    grades = [r["grade"] for r in rows]
    diameters = np.array([float(r["lesion_diameter_mm"]) for r in rows])
    assert 0.3 < grades.count("1") / len(rows) < 0.7, grades
    # a regression target worth learning: spread wide relative to its mean
    assert diameters.std() / diameters.mean() > 0.3
    assert np.percentile(diameters, 90) > 2.0 * np.percentile(diameters, 10)


def test_a_lesion_is_a_round_blob_of_the_requested_size() -> None:
    size = 128
    img = np.full((size, size), -850.0, dtype=np.float32)
    lungs = np.ones((size, size), dtype=bool)
    lesion = synth.Lesion(True, 1, 0.0, 0.0, 5.0, 20.0)
    geo = [(64.0, 40.0, 40.0, 20.0), (64.0, 88.0, 40.0, 20.0)]
    radius = synth._add_lesion(img, np.random.default_rng(0), lesion, geo, lungs, 40.0, 1.0)
    inside = img > -400
    assert 4.0 < radius < 6.0  # 5 px, jittered per image
    # the returned radius is the one drawn: the blob's area is about pi r^2
    assert 0.85 * np.pi * radius**2 < inside.sum() < 1.15 * np.pi * radius**2
    ys, xs = np.nonzero(inside)
    assert abs(ys.mean() - 64) < 3 and abs(xs.mean() - 88) < 3  # right lung, centre
    assert -20 < img[inside].max() < 60


@pytest.mark.slow
def test_default_cohort_size_and_prevalence(tmp_path: Path) -> None:
    # Its speed is a `make bench` figure (synth ×4 vs ×1), not a wall-clock assertion here.
    params = build_params(tmp_path)
    result = synth.run(params, synth.Paths(out_dir=tmp_path / "cohort"))
    assert 800 <= result.images <= 1200
    assert 0.38 <= result.positives / result.images <= 0.52


def test_a_lung_lesion_too_large_for_its_lung_is_shrunk_to_fit() -> None:
    size = 128
    img = np.full((size, size), 40.0, dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    lungs = ((yy - 64) / 30.0) ** 2 + ((xx - 88) / 12.0) ** 2 <= 1  # right lung, 12 px wide
    img[lungs] = -850.0
    lesion = synth.Lesion(True, 1, 0.3, 0.0, 20.0, 20.0)  # radius 20 px: cannot fit
    geo = [(64.0, 40.0, 30.0, 12.0), (64.0, 88.0, 30.0, 12.0)]
    radius = synth._add_lesion(img, np.random.default_rng(1), lesion, geo, lungs, 40.0, 1.0)
    assert 3.0 < radius < 12.0
    inside = (img > -400) & lungs
    assert 0.8 * np.pi * radius**2 < inside.sum() < 1.2 * np.pi * radius**2
    assert not ((img > -400) & (img < 39.0) & ~lungs).any()  # painted in lung only
