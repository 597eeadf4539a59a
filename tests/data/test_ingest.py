"""ingest: exact accounting, pixel values, labels, atomic output, workers."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from pipeline.data import deid, dicom_io, ingest, safe_read
from pipeline.data.pixels import PixelStore, load_pixels
from pipeline.errors import InputError
from tests.conftest import SmallCohort, build_params, write_dicom

KEY = bytes(range(32))
MPEG2 = "1.2.840.10008.1.2.4.100"


def _ingest(input_dir: Path, out: Path, labels: Path | None = None, workers: int = 1) -> Any:
    return ingest.ingest_folder(input_dir, out, KEY, labels, workers)


def sid(rel: str) -> str:
    """The ``source_id`` of a path relative to the input folder, under ``KEY``."""
    return deid.Pseudonymizer(KEY).source(rel)


def _quarantine(out: Path) -> dict[str, str]:
    with (out / "quarantine.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["source_id", "reason"] if rows else True
    return {r["source_id"]: r["reason"] for r in rows}


def _copy_of_a_cohort_file(cohort: SmallCohort, target: Path, **changes: Any) -> None:
    """A cohort image written again under a new SOP UID, with some attributes changed."""
    ds = pydicom.dcmread(next(iter(sorted(cohort.dicom_dir.rglob("IM*")))))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for key, value in changes.items():
        setattr(ds, key, value)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)


@pytest.fixture
def messy_input(tmp_path: Path, small_cohort: SmallCohort) -> tuple[Path, dict[str, str], int]:
    """The small cohort plus one file of each kind that must be quarantined.

    Returns (input folder, {relative path: expected reason (prefix)}, number of good files).
    """
    root = tmp_path / "input"
    # images only: SEG objects are accounted for in tests/data/test_seg_ingest.py
    shutil.copytree(small_cohort.dicom_dir, root, ignore=shutil.ignore_patterns("SG*"))
    good = sum(1 for p in root.rglob("*") if p.is_file())
    first = sorted(root.rglob("IM*"))[0]
    data = first.read_bytes()
    bad: dict[str, str] = {}

    def add(rel: str, reason: str) -> Path:
        bad[rel] = reason
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        return root / rel

    add("extra/notes.txt", "not a DICOM file").write_text("not an image\n")
    add("extra/.DS_Store", "not a DICOM file").write_bytes(b"\0" * 10)
    add("extra/empty", "not a DICOM file").write_bytes(b"")
    add("extra/cut_header.dcm", "truncated DICOM file").write_bytes(data[:400])
    add("extra/cut_pixels.dcm", "truncated DICOM file").write_bytes(data[: len(data) - 999])
    shutil.copy(
        get_testdata_file("test-SR.dcm"),
        add("extra/report", "no pixel data (Comprehensive SR Storage)"),
    )
    shutil.copy(
        get_testdata_file("rtplan.dcm"), add("extra/plan.dcm", "no pixel data (RT Plan Storage)")
    )
    ds = pydicom.dcmread(first)
    _copy_of_a_cohort_file(small_cohort, add("extra/short.dcm", "pixel data shorter than the header says"),
                           PixelData=ds.PixelData[: len(ds.PixelData) // 2])  # fmt: skip
    _copy_of_a_cohort_file(
        small_cohort, add("extra/burned", dicom_io.BURNED_IN), BurnedInAnnotation="YES"
    )
    write_dicom(add("extra/mpeg2.dcm", "no installed decoder for transfer syntax MPEG2 Main Profile / Main Level"),
                np.zeros((8, 8), np.int16), transfer_syntax=MPEG2, pixel_bytes=b"\0" * 64)  # fmt: skip
    write_dicom(add("extra/colour.dcm", "unsupported: 1 samples per pixel (RGB)"),
                np.zeros((8, 8), np.uint8), modality="OT", PhotometricInterpretation="RGB")  # fmt: skip
    shutil.copy(first, add("extra/copy_of_first", ingest.DUPLICATE))
    outside = tmp_path / "outside.dcm"
    shutil.copy(first, outside)
    os.symlink(outside, add("extra/link_out", safe_read.SYMLINK))
    os.symlink(tmp_path, add("extra/link_dir", safe_read.SYMLINK))
    os.symlink(first, add("extra/link_in", safe_read.SYMLINK))  # inside, still not followed
    return root, bad, good


def test_every_file_is_ingested_or_quarantined_with_its_reason(
    messy_input: tuple[Path, dict[str, str], int], tmp_path: Path, small_cohort: SmallCohort
) -> None:
    root, bad, good = messy_input
    out = tmp_path / "out"
    result = _ingest(root, out, small_cohort.labels_csv)
    manifest = pd.read_parquet(out / "manifest.parquet")
    quarantine = _quarantine(out)
    seen = {
        sid(p.relative_to(root).as_posix())
        for p in root.rglob("*")
        if p.is_file() or p.is_symlink()
    }
    ingested = set(manifest["source_id"])
    assert ingested.isdisjoint(quarantine)
    assert ingested | set(quarantine) == seen
    assert set(quarantine) == {sid(rel) for rel in bad}
    for rel, reason in bad.items():
        assert quarantine[sid(rel)].startswith(reason), (rel, quarantine[sid(rel)])
    assert result.sources[sid("extra/notes.txt")] == "extra/notes.txt"
    assert len(ingested) == good == len(manifest) == small_cohort.result.images
    assert (result.files_seen, result.files_ingested, result.quarantined) == (
        len(seen), good, len(bad)
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files_seen"] == len(seen) and summary["quarantined"] == len(bad)
    assert sum(summary["quarantine_reasons"].values()) == len(bad)
    assert summary["labels"]["labels_without_image"] == 0
    assert summary["labels"]["images_without_label"] == 0
    assert (manifest["label"] >= 0).all() and manifest[
        "label"
    ].sum() == small_cohort.result.positives
    assert not list(out.parent.glob(".out.*"))  # no staging folder left behind


def test_manifest_follows_the_contract(small_cohort: SmallCohort, tmp_path: Path) -> None:
    from pipeline.data.contracts import MANIFEST_COLUMNS, PATIENT_ID_REGEX, SITE_REGEX, UID_REGEX

    out = tmp_path / "out"
    _ingest(small_cohort.dicom_dir, out, small_cohort.labels_csv)
    m = pd.read_parquet(out / "manifest.parquet")
    # the contract's columns, then the labels file's extra (candidate target) columns
    extra = ("grade", "lesion_diameter_mm", "finding_nodule", "finding_mass", "finding_large")
    assert tuple(m.columns) == (*MANIFEST_COLUMNS, *extra)
    assert m["grade"].dtype == "float64" and m["lesion_diameter_mm"].isna().any()
    positions = (ingest._ROWS, ingest._COLUMNS, ingest._PIXEL_PATH, ingest._PIXEL_OFFSET)
    assert [dicom_io.ROW_FIELDS[i] for i in positions] == [
        "rows", "columns", "pixel_path", "pixel_offset"
    ]  # fmt: skip
    assert m["source_id"].str.fullmatch(r"F-[0-9a-f]{16}").all() and m["source_id"].is_unique
    assert m["image_id"].is_unique
    assert m["patient_id"].str.fullmatch(PATIENT_ID_REGEX[1:-1]).all()
    for col in ("study_uid", "series_uid", "sop_uid"):
        assert m[col].str.fullmatch(UID_REGEX[1:-1]).all() and m[col].str.len().max() <= 64
    assert m["site"].str.fullmatch(SITE_REGEX[1:-1]).all() and m["site"].nunique() >= 3
    assert m["patient_id"].nunique() == 16
    assert set(m["modality"]) == {"CT"} and set(m["photometric"]) == {"MONOCHROME2"}
    assert m["manufacturer"].nunique() >= 3 and m["official_split"].eq("").all()
    for col, dtype in (("frame", "int64"), ("label", "int64"), ("pixel_mean", "float64")):
        assert str(m[col].dtype) == dtype
    row = m.iloc[0]
    assert row["pixel_path"] == "pixels/shard-0000.f32" and row["pixel_offset"] == 0
    assert str(m["pixel_offset"].dtype) == "int64"
    pixels = load_pixels(out, row)
    assert isinstance(pixels, np.memmap) and pixels.dtype == np.float32 and pixels.ndim == 2
    assert not pixels.flags.writeable
    assert pixels.shape == (row["rows"], row["columns"]) == (64, 64)
    assert np.isclose(pixels.mean(dtype=np.float64), row["pixel_mean"], rtol=1e-5)
    assert np.isclose(pixels.std(dtype=np.float64), row["pixel_std"], rtol=1e-4)
    assert (pixels.min(), pixels.max()) == (row["pixel_min"], row["pixel_max"])
    # pixel_sha256: SHA-256 of the stored float32 bytes, whatever the key
    assert row["pixel_sha256"] == hashlib.sha256(np.asarray(pixels).tobytes()).hexdigest()


def test_ct_pixels_are_hounsfield_units(tmp_path: Path) -> None:
    stored = np.random.default_rng(0).integers(0, 3000, (40, 48)).astype(np.int16)
    write_dicom(tmp_path / "in/ct.dcm", stored, RescaleSlope="1", RescaleIntercept="-1024")
    write_dicom(tmp_path / "in/ct2.dcm", stored, RescaleSlope="2", RescaleIntercept="-3000")
    out = tmp_path / "out"
    _ingest(tmp_path / "in", out)
    m = pd.read_parquet(out / "manifest.parquet").set_index("source_id")
    hu = load_pixels(out, m.loc[sid("ct.dcm")])
    np.testing.assert_array_equal(hu, stored.astype(np.float32) - 1024)
    np.testing.assert_array_equal(load_pixels(out, m.loc[sid("ct2.dcm")]), stored * 2.0 - 3000)
    assert m.loc[sid("ct.dcm"), "pixel_min"] == stored.min() - 1024
    assert (m["label"] == -1).all()


def test_monochrome1_is_inverted_so_higher_is_brighter(tmp_path: Path) -> None:
    stored = np.array([[0, 100], [2000, 4095]], dtype=np.uint16)
    write_dicom(tmp_path / "in/cr", stored, modality="CR", PhotometricInterpretation="MONOCHROME1",
                BitsStored=12, HighBit=11)  # fmt: skip
    out = tmp_path / "out"
    _ingest(tmp_path / "in", out)
    m = pd.read_parquet(out / "manifest.parquet")
    assert m.loc[0, "photometric"] == "MONOCHROME1" and m.loc[0, "modality"] == "CR"
    np.testing.assert_array_equal(load_pixels(out, m.loc[0]), 4095.0 - stored)


@pytest.mark.parametrize(
    ("modality", "dtype", "bits_stored", "values"),
    [
        ("OT", np.uint8, 8, [[0, 1], [128, 255]]),
        ("MR", np.int16, 16, [[-32768, -1], [0, 32767]]),
        ("MR", np.int16, 12, [[-2048, -1], [0, 2047]]),
        ("DX", np.uint16, 16, [[0, 1], [40000, 65535]]),
        ("CR", np.uint16, 10, [[0, 1], [512, 1023]]),
    ],
)
def test_integer_encodings_are_read_exactly(
    tmp_path: Path, modality: str, dtype: Any, bits_stored: int, values: list[list[int]]
) -> None:
    stored = np.array(values, dtype=dtype)
    path = tmp_path / "in/img.dcm"
    write_dicom(path, stored, modality=modality, BitsStored=bits_stored, HighBit=bits_stored - 1)
    out = tmp_path / "out"
    _ingest(tmp_path / "in", out)
    m = pd.read_parquet(out / "manifest.parquet")
    got = load_pixels(out, m.loc[0])
    np.testing.assert_array_equal(got, stored.astype(np.float32))
    np.testing.assert_array_equal(got, pydicom.dcmread(path).pixel_array)
    assert (m.loc[0, "bits_allocated"], m.loc[0, "bits_stored"]) == (
        stored.itemsize * 8,
        bits_stored,
    )
    assert m.loc[0, "pixel_representation"] == int(np.dtype(dtype).kind == "i")
    assert m.loc[0, "modality"] == modality


def test_multi_frame_file_gives_one_row_per_frame(tmp_path: Path) -> None:
    frames = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    ds = write_dicom(tmp_path / "in/multi", frames, modality="OT")
    out = tmp_path / "out"
    result = _ingest(tmp_path / "in", out)
    m = pd.read_parquet(out / "manifest.parquet")
    assert (result.files_ingested, result.rows) == (1, 3)
    assert list(m["frame"]) == [0, 1, 2]
    assert m["source_id"].eq(sid("multi")).all() and m["sop_uid"].nunique() == 1
    assert m["pixel_sha256"].nunique() == 3  # one per frame
    assert list(m["image_id"]) == [f"{m.loc[0, 'sop_uid']}.f{i}" for i in range(3)]
    for i in range(3):
        np.testing.assert_array_equal(load_pixels(out, m.loc[i]), frames[i])
    assert ds.SOPInstanceUID not in set(m["sop_uid"])  # remapped


def test_labels_are_matched_checked_and_never_copied(
    tmp_path: Path, small_cohort: SmallCohort
) -> None:
    with small_cohort.labels_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sop_instance_uid", "patient_id", "label", "split", "path"])
        w.writerow(
            [rows[0]["sop_instance_uid"], rows[0]["patient_id"], rows[0]["label"], "train", "a/b"]
        )
        w.writerow(
            [rows[1]["sop_instance_uid"], "99999999", rows[1]["label"], "test", ""]
        )  # wrong patient
        w.writerow([rows[2]["sop_instance_uid"], "", "1", "val", "../../etc/passwd"])
        w.writerow([rows[2]["sop_instance_uid"], "", "0", "val", "/etc/shadow"])  # conflict
        w.writerow([rows[3]["sop_instance_uid"], "", "maybe", "", ""])
        w.writerow([generate_uid(), "", "1", "", ""])  # no such image
    out = tmp_path / "out"
    result = _ingest(small_cohort.dicom_dir, out, labels)
    m = pd.read_parquet(out / "manifest.parquet")
    lab = result.labels
    assert lab["rows"] == 6 and lab["matched_images"] == 1 == (m["label"] >= 0).sum()
    assert lab["patient_mismatch"] == 1 and lab["conflicting"] == 1 and lab["invalid_label"] == 1
    assert lab["paths_outside_input"] == 2 and lab["labels_without_image"] == 1
    assert lab["images_without_label"] == len(m) - 1
    labelled = m[m["label"] >= 0].iloc[0]
    assert (labelled["label"], labelled["official_split"]) == (int(rows[0]["label"]), "train")
    assert set(m["official_split"]) == {"", "train"}
    assert "99999999" not in (out / "manifest.parquet").read_bytes().decode("latin-1")
    assert "labels:" in result.summary() and "paths outside input" in result.summary()


def test_without_labels_every_label_is_minus_one(small_cohort: SmallCohort, tmp_path: Path) -> None:
    params = build_params(tmp_path)
    paths = ingest.Paths(input_dir=small_cohort.dicom_dir, labels_csv=None, out_dir=tmp_path / "o")
    result = ingest.run(params, paths)
    m = pd.read_parquet(tmp_path / "o/manifest.parquet")
    assert result.labels is None and (m["label"] == -1).all() and len(m) == result.rows
    key = Path(params.base.secret_key_path)
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    assert "pseudonyms:" not in result.summary()  # real data: the local key, said nowhere


def test_one_and_two_workers_write_the_same_outputs(
    messy_input: tuple[Path, dict[str, str], int], tmp_path: Path
) -> None:
    root = messy_input[0]
    for name in ("w1", "w2", "w2-again"):
        _ingest(root, tmp_path / name, workers=1 if name == "w1" else 2)

    def files(out: Path) -> dict[str, bytes]:
        return {
            p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
        }

    w1 = files(tmp_path / "w1")
    assert {"manifest.parquet", "quarantine.csv", "summary.json"} < set(w1)
    shards = sorted(pd.read_parquet(tmp_path / "w1/manifest.parquet")["pixel_path"].unique())
    assert len(shards) > 2 and sorted(n for n in w1 if n.startswith("pixels/")) == shards
    assert files(tmp_path / "w2") == w1  # every file, byte for byte
    assert files(tmp_path / "w2-again") == w1


def test_duplicate_keeps_the_first_file_and_its_pixels(tmp_path: Path) -> None:
    a = np.full((4, 4), 7, np.int16)
    ds = write_dicom(tmp_path / "in/a.dcm", a)
    write_dicom(tmp_path / "in/b.dcm", a + 1, SOPInstanceUID=ds.SOPInstanceUID)
    write_dicom(tmp_path / "in/c.dcm", np.full((2, 3), 9, np.int16))
    out = tmp_path / "out"
    _ingest(tmp_path / "in", out, workers=2)
    m = pd.read_parquet(out / "manifest.parquet")
    assert list(m["source_id"]) == [sid("a.dcm"), sid("c.dcm")]
    assert _quarantine(out) == {sid("b.dcm"): ingest.DUPLICATE}
    np.testing.assert_array_equal(load_pixels(out, m.loc[0]), a)
    np.testing.assert_array_equal(load_pixels(out, m.loc[1]), np.full((2, 3), 9))
    # The loser's pixels are gone: the one shard holds exactly the kept images, in order.
    assert [p.name for p in (out / "pixels").iterdir()] == ["shard-0000.f32"]
    assert list(m["pixel_offset"]) == [0, a.size * 4]
    assert (out / "pixels/shard-0000.f32").read_bytes() == (
        a.astype("<f4").tobytes() + np.full(6, 9, "<f4").tobytes()
    )


def test_a_shard_left_with_only_a_duplicate_is_removed(tmp_path: Path) -> None:
    first = write_dicom(tmp_path / "in/a0.dcm", np.zeros((4, 4), np.int16))
    for i in range(1, ingest.MIN_CHUNK):  # chunk 0: a0..a3
        write_dicom(tmp_path / f"in/a{i}.dcm", np.full((4, 4), i, np.int16))
    write_dicom(tmp_path / "in/b.dcm", np.ones((4, 4), np.int16),
                SOPInstanceUID=first.SOPInstanceUID)  # fmt: skip
    (tmp_path / "in/c.txt").write_text("chunk 1: the duplicate and this")
    out = tmp_path / "out"
    _ingest(tmp_path / "in", out, workers=2)
    assert _quarantine(out)[sid("b.dcm")] == ingest.DUPLICATE
    assert [p.name for p in (out / "pixels").iterdir()] == ["shard-0000.f32"]
    assert set(pd.read_parquet(out / "manifest.parquet")["pixel_path"]) == {"pixels/shard-0000.f32"}


def test_sharded_store_round_trips_exactly(tmp_path: Path) -> None:
    """Pixels read back from the shards equal the decoded pixels; the shards hold nothing else."""
    rng = np.random.default_rng(3)
    expected: dict[str, list[np.ndarray]] = {}
    for i in range(12):  # > MIN_CHUNK files: several shards, written by two workers
        stored = rng.integers(0, 3000, (5 + i, 7 + 2 * i)).astype(np.int16)
        write_dicom(tmp_path / f"in/ct{i:02d}.dcm", stored, RescaleSlope="2",
                    RescaleIntercept="-1024")  # fmt: skip
        expected[sid(f"ct{i:02d}.dcm")] = [stored * np.float32(2) - np.float32(1024)]
    frames = rng.integers(0, 255, (3, 6, 4)).astype(np.uint8)
    write_dicom(tmp_path / "in/multi", frames, modality="OT")
    expected[sid("multi")] = [f.astype(np.float32) for f in frames]
    (tmp_path / "in/junk.txt").write_text("quarantined, no pixels")
    out = tmp_path / "out"
    result = _ingest(tmp_path / "in", out, workers=2)
    m = pd.read_parquet(out / "manifest.parquet")
    assert (result.files_ingested, result.rows, result.quarantined) == (13, 15, 1)
    assert m["pixel_path"].nunique() == len(ingest.chunks(ingest.walk(tmp_path / "in")[0])) > 2
    with PixelStore(out) as store:
        for row in m.itertuples():
            want = expected[row.source_id][row.frame]
            for got in (load_pixels(out, row), load_pixels(out, m.loc[row.Index]), store.load(row)):
                assert got.dtype == np.float32 and got.shape == want.shape
                assert not got.flags.writeable
                np.testing.assert_array_equal(got, want)
    # Each shard is exactly its images, back to back in manifest order.
    for shard, rows in m.groupby("pixel_path", sort=False):
        sizes = (rows["rows"] * rows["columns"] * 4).to_numpy()
        assert list(rows["pixel_offset"]) == [0, *np.cumsum(sizes)[:-1]]
        assert (out / shard).stat().st_size == sizes.sum()
    assert sorted(p.relative_to(out).as_posix() for p in (out / "pixels").iterdir()) == sorted(
        m["pixel_path"].unique()
    )


def test_a_crash_leaves_no_output_and_keeps_the_old_one(
    small_cohort: SmallCohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.io import atomic_path

    out = tmp_path / "out"
    with atomic_path(out, stage="ingest") as staged:  # a previous run's output (marked)
        staged.mkdir()
        (staged / "old.txt").write_text("previous run")

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(ingest, "_write_outputs", boom)
    with pytest.raises(RuntimeError):
        _ingest(small_cohort.dicom_dir, out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (out / "old.txt").read_text() == "previous run"


def test_missing_inputs_are_explained(tmp_path: Path, small_cohort: SmallCohort) -> None:
    with pytest.raises(InputError, match="input folder not found"):
        _ingest(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(InputError, match="labels file not found"):
        _ingest(small_cohort.dicom_dir, tmp_path / "out", tmp_path / "nope.csv")
    bad_labels = tmp_path / "labels.csv"
    bad_labels.write_text("uid,label\n1.2.3,1\n")
    with pytest.raises(InputError, match="sop_instance_uid and label"):
        _ingest(small_cohort.dicom_dir, tmp_path / "out", bad_labels)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no files"):
        _ingest(tmp_path / "empty", tmp_path / "out")


def test_cli_runs_the_stage(small_cohort: SmallCohort, tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from pipeline.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"base": {"secret_key_path": str(tmp_path / "k.key")}}))
    out = tmp_path / "ingested"
    got = CliRunner().invoke(
        app,
        ["ingest", "--input", str(small_cohort.dicom_dir), "--labels", str(small_cohort.labels_csv),
         "--out", str(out), "--workers", "2", "--params", str(params)],
    )  # fmt: skip
    assert got.exit_code == 0, got.output
    assert f"({small_cohort.result.images} images)" in got.output and "2 worker(s)" in got.output
    assert (out / "manifest.parquet").is_file() and (tmp_path / "k.key").is_file()


def test_file_names_that_are_not_utf8_are_written_as_escapes(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    write_dicom(tmp_path / "in" / os.fsdecode(b"caf\xe9.dcm"), np.zeros((4, 4), np.int16))
    (tmp_path / "in" / os.fsdecode(b"n\xf6tes")).write_text("x")
    out = tmp_path / "out"
    result = _ingest(tmp_path / "in", out)
    assert (result.files_ingested, result.quarantined) == (1, 1)
    # ids from the names' exact bytes (issue 21 §7); the escapes are only how they are shown
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert list(manifest["source_id"]) == [sid(os.fsdecode(b"caf\xe9.dcm"))]
    assert list(_quarantine(out)) == [sid(os.fsdecode(b"n\xf6tes"))]
    assert set(result.sources.values()) == {"caf\\xe9.dcm", "n\\xf6tes"}


def test_a_missing_labels_file_is_an_error_unless_labels_are_optional(
    small_cohort: SmallCohort, tmp_path: Path
) -> None:
    paths = ingest.Paths(small_cohort.dicom_dir, tmp_path / "missing.csv", tmp_path / "out")
    with pytest.raises(InputError, match="require_labels=false"):
        ingest.run(build_params(tmp_path), paths)
    params = build_params(tmp_path, ingest={"require_labels": False})
    result = ingest.run(params, paths)
    assert result.labels is None and result.rows == small_cohort.result.images
