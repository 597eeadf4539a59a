"""ingest against pydicom's own test files: every installed decoder, every kind of refusal.

For each grey-scale image the stored pixels must equal pydicom's decoded array after the
modality LUT (MONOCHROME1 mirrored); non-image files must be quarantined with a reason that
says why (colour files are ingested: tests/data/test_colour.py); the whole folder must be
accounted for file by file.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from pipeline.data import ingest
from pipeline.data.deid import Pseudonymizer
from pipeline.data.pixels import load_pixels

KEY = b"decoder tests key, thirty-two b."
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

GREY = [  # (file, frames): native LE/BE, deflate, RLE, JPEG (extended, LS), JPEG 2000, LUTs
    ("CT_small.dcm", 1), ("MR_small.dcm", 1), ("MR_small_implicit.dcm", 1),
    ("MR_small_bigendian.dcm", 1), ("MR_small_expb.dcm", 1), ("MR_small_padded.dcm", 1),
    ("MR_small_RLE.dcm", 1), ("MR_small_jpeg_ls_lossless.dcm", 1),
    ("MR_small_jp2klossless.dcm", 1), ("JPGExtended.dcm", 1), ("JPEG2000.dcm", 1),
    ("JPEGLSNearLossless_08.dcm", 1), ("JPEGLSNearLossless_16.dcm", 1), ("693_J2KI.dcm", 1),
    ("J2K_pixelrep_mismatch.dcm", 1), ("image_dfl.dcm", 1), ("examples_overlay.dcm", 1),
    ("rtdose.dcm", 15),
    ("rtdose_1frame.dcm", 1), ("rtdose_expb.dcm", 15), ("rtdose_rle.dcm", 15),
    ("rtdose_rle_1frame.dcm", 1), ("dicomdirtests/77654033/CR1/6154", 1),
    ("dicomdirtests/77654033/CT2/17106", 1), ("dicomdirtests/98892003/MR1/15820", 1),
]  # fmt: skip

REFUSED = [
    ("rtplan.dcm", "no pixel data (RT Plan Storage)"),
    ("test-SR.dcm", "no pixel data (Comprehensive SR Storage)"),
    ("reportsi.dcm", "no pixel data (Basic Text SR Storage)"),
    ("waveform_ecg.dcm", "no pixel data (12-lead ECG Waveform Storage)"),
    ("dicomdirtests/DICOMDIR", "no pixel data (Media Storage Directory Storage)"),
    ("MR_truncated.dcm", "truncated DICOM file"),
    ("rtplan_truncated.dcm", "truncated DICOM file"),
    ("no_meta.dcm", "not a DICOM file"),
    ("README.txt", "not a DICOM file"),
    ("badVR.dcm", "invalid NumberOfFrames in header (VR IS)"),
    # Segmentation Storage (SEG) objects are masks, not images; these lack attributes highdicom
    # needs, and reference no image of the batch.
    ("liver_1frame.dcm", "unreadable segmentation (SEG) object"),
    ("liver_expb_1frame.dcm", "unreadable segmentation (SEG) object"),
]


def _one(name: str, tmp_path: Path) -> tuple[Path, Path]:
    """Copy one test file, as ``item``, into its own input folder and ingest it."""
    source = TEST_FILES / name
    if not source.is_file():
        pytest.skip(f"{name} is not shipped with this pydicom")
    (tmp_path / "in").mkdir()
    shutil.copy(source, tmp_path / "in" / "item")
    ingest.ingest_folder(tmp_path / "in", tmp_path / "out", KEY)
    return source, tmp_path / "out"


def _expected(path: Path) -> np.ndarray:
    """pydicom's decoded pixels after the modality LUT, MONOCHROME1 mirrored: (frames, r, c)."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        bits = ds.BitsStored
        lo, hi = (
            (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
            if ds.PixelRepresentation
            else (0, 2**bits - 1)
        )
        lo, hi = apply_modality_lut(np.array([lo, hi]), ds)
        values = lo + hi - values
    return values if values.ndim == 3 else values[None]


@pytest.mark.parametrize(("name", "frames"), GREY)
def test_grey_image_is_ingested_as_pydicom_decodes_it(
    name: str, frames: int, tmp_path: Path
) -> None:
    source, out = _one(name, tmp_path)
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == frames, (out / "quarantine.csv").read_text()
    expected = _expected(source)
    assert expected.shape[0] == frames
    for row in manifest.itertuples():
        got = load_pixels(out, row)
        assert got.dtype == np.float32 and got.shape == (row.rows, row.columns)
        np.testing.assert_allclose(got, expected[row.frame], rtol=1e-6, atol=1e-6)
        assert np.isclose(row.pixel_max, expected[row.frame].max(), rtol=1e-6)
    if frames > 1:
        assert list(manifest["frame"]) == list(range(frames))
        assert manifest["image_id"].str.endswith(tuple(f".f{i}" for i in range(frames))).all()


@pytest.mark.parametrize(("name", "reason"), REFUSED)
def test_unusable_file_is_quarantined_with_its_reason(
    name: str, reason: str, tmp_path: Path
) -> None:
    _, out = _one(name, tmp_path)
    assert pd.read_parquet(out / "manifest.parquet").empty
    with (out / "quarantine.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["source_id"] == Pseudonymizer(KEY).source("item")
    assert rows[0]["reason"].startswith(reason), rows[0]["reason"]


@pytest.mark.parametrize("name", ["JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"])
def test_ingest_agrees_with_pydicom_on_hard_codestreams(name: str, tmp_path: Path) -> None:
    """Decodable by the installed plugins or not, ingest must say the same as pydicom."""
    source, out = _one(name, tmp_path)
    try:
        expected: Any = _expected(source)
    except Exception:
        expected = None
    manifest = pd.read_parquet(out / "manifest.parquet")
    if expected is None:
        reason = (out / "quarantine.csv").read_text().splitlines()[1]
        assert "pixel data could not be decoded (" in reason and manifest.empty
    else:
        np.testing.assert_allclose(load_pixels(out, manifest.loc[0]), expected[0])


def test_the_whole_test_folder_is_accounted_for(tmp_path: Path) -> None:
    assert get_testdata_file("CT_small.dcm") is not None
    files = [p for p in TEST_FILES.rglob("*") if p.is_file()]
    result = ingest.ingest_folder(TEST_FILES, tmp_path / "out", KEY)
    manifest = pd.read_parquet(tmp_path / "out/manifest.parquet")
    with (tmp_path / "out/quarantine.csv").open(newline="") as fh:
        quarantined = [r["source_id"] for r in csv.DictReader(fh)]
    ingested = set(manifest["source_id"])
    assert len(quarantined) == len(set(quarantined))
    assert ingested.isdisjoint(quarantined)
    assert len(ingested) + len(quarantined) == len(files) == result.files_seen
    assert result.files_ingested == len(ingested) >= 25 and result.rows == len(manifest) > 40
    assert manifest["image_id"].is_unique
    colour = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "PALETTE COLOR"}
    assert set(manifest["photometric"]) == {"MONOCHROME1", "MONOCHROME2"} | colour
    assert {"CT", "MR", "CR", "RTDOSE"} <= set(manifest["modality"])
