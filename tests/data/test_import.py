"""``radops import``: each importer's export round-trips through the normal, strict ingest
(pixels, labels, splits and masks equal to the source), and a bad input is one line of error.

Inputs are tiny arrays and images made here, never the shared datasets."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from pipeline import catalog
from pipeline.config import Params
from pipeline.data import ingest
from pipeline.data.importers import images, medmnist, nifti
from pipeline.data.pixels import load_pixels
from pipeline.data.seg_ingest import load_mask
from pipeline.errors import InputError

IMAGE_FOLDER = re.compile(r"PA(\d{6})/ST(\d{6})/SE000001/IM000001\.dcm")


def _ingest(
    make_params: Callable[..., Params], root: Path, export: Path, **validate: Any
) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Ingest ``export`` as a user would (params pointing at it); the manifest (with the
    file each row came from, ``src``), the segments table and the ingest folder."""
    params = make_params(
        root,
        data={"dicom_dir": str(export / "dicom"), "labels_csv": str(export / "labels.csv")},
        **({"validate": validate} if validate else {}),
    )
    result = ingest.run(params, ingest.Paths.from_params(params))
    assert result.quarantined == 0, result.reasons
    out = result.out_dir
    manifest = pd.read_parquet(out / catalog.MANIFEST_FILE)
    manifest["src"] = manifest["source_id"].map(result.sources)
    segments_file = out / catalog.SEGMENTS_FILE
    segments = pd.read_parquet(segments_file) if segments_file.is_file() else pd.DataFrame()
    return manifest, segments, out


def _npz(path: Path, colour: bool, classes: int, width: int = 1) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    arrays: dict[str, Any] = {}
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        shape = (n, 6, 5, 3) if colour else (n, 6, 5)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, classes, (n, width), dtype=np.uint8)
    arrays["train_labels"][0] = classes - 1  # every class present
    np.savez(path, **arrays)
    return arrays


def _by_index(manifest: pd.DataFrame) -> pd.DataFrame:
    """Manifest rows in source order: MedMNIST image n is patient folder PA<n>."""
    number = manifest["src"].map(lambda s: int(IMAGE_FOLDER.fullmatch(s).group(1)))  # type: ignore[union-attr]
    return manifest.assign(n=number).sort_values("n").reset_index(drop=True)


def test_medmnist_grey_binary_round_trips(
    tmp_path: Path, make_params: Callable[..., Params]
) -> None:
    arrays = _npz(tmp_path / "set.npz", colour=False, classes=2)
    result = medmnist.run(tmp_path / "set.npz", tmp_path / "export", modality="US", spacing_mm=0.5)
    assert (result.images, result.patients) == (9, 9)
    manifest, _, out = _ingest(make_params, tmp_path, tmp_path / "export")
    rows = _by_index(manifest)
    want_splits = ["train"] * 4 + ["val"] * 2 + ["test"] * 3
    assert rows["official_split"].tolist() == want_splits
    labels = np.concatenate([arrays[f"{s}_labels"][:, 0] for s in ("train", "val", "test")])
    assert rows["label"].tolist() == labels.tolist()
    assert rows["patient_id"].is_unique  # one pseudonymous patient per image
    assert set(rows["modality"]) == {"US"} and set(rows["pixel_spacing_row"]) == {0.5}
    pixels = np.concatenate([arrays[f"{s}_images"] for s in ("train", "val", "test")])
    for i, row in rows.iterrows():
        np.testing.assert_array_equal(np.asarray(load_pixels(out, row)), pixels[i])


def test_medmnist_colour_grades_round_trip_into_a_target_column(
    tmp_path: Path, make_params: Callable[..., Params]
) -> None:
    arrays = _npz(tmp_path / "set.npz", colour=True, classes=5)
    result = medmnist.run(tmp_path / "set.npz", tmp_path / "export", target="grade")
    assert "validate.target_ranges: {grade: [0, 4]}" in result.summary()
    manifest, _, out = _ingest(
        make_params, tmp_path, tmp_path / "export", target_ranges={"grade": [0, 4]}
    )
    rows = _by_index(manifest)
    grades = np.concatenate([arrays[f"{s}_labels"][:, 0] for s in ("train", "val", "test")])
    assert rows["grade"].tolist() == grades.astype(float).tolist()
    assert rows["label"].tolist() == (grades > 0).astype(int).tolist()  # any class above 0
    pixels = np.concatenate([arrays[f"{s}_images"] for s in ("train", "val", "test")])
    assert rows["channels"].tolist() == [3] * len(rows)
    for i, row in rows.iterrows():  # stored channels first, scaled to [0, 1]
        got = np.asarray(load_pixels(out, row))
        np.testing.assert_array_equal(got, np.moveaxis(pixels[i], -1, 0) / np.float32(255))


def test_medmnist_multilabel_writes_one_column_per_flag(tmp_path: Path) -> None:
    arrays = _npz(tmp_path / "set.npz", colour=False, classes=2, width=3)
    medmnist.run(tmp_path / "set.npz", tmp_path / "export")
    with (tmp_path / "export/labels.csv").open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == [
        "sop_instance_uid", "patient_id", "label", "split", "label_0", "label_1", "label_2"
    ]  # fmt: skip
    flags = arrays["train_labels"][1]
    assert [int(table[1][f"label_{k}"]) for k in range(3)] == flags.tolist()
    assert int(table[1]["label"]) == int(flags.any())


def _one_line(exc: pytest.ExceptionInfo[InputError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and exc.value.exit_code == 3
    return text


def test_medmnist_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    _npz(tmp_path / "grades.npz", colour=False, classes=5)
    with pytest.raises(InputError) as exc:  # label is binary: a class column must be named
        medmnist.run(tmp_path / "grades.npz", tmp_path / "out")
    assert "--target grade" in _one_line(exc)
    np.savez(tmp_path / "half.npz", train_images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(InputError) as exc:
        medmnist.run(tmp_path / "half.npz", tmp_path / "out")
    assert "train_labels" in _one_line(exc)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError) as exc:
        medmnist.run(tmp_path / "junk.npz", tmp_path / "out")
    _one_line(exc)
    assert not (tmp_path / "out").exists()


def _drive_like(root: Path) -> dict[str, Any]:
    """A DRIVE-shaped folder: colour TIFF images, GIF vessel masks and FOV masks (0/255), with
    DRIVE's own names, plus a 16-bit grey PNG of another patient."""
    rng = np.random.default_rng(5)
    made: dict[str, Any] = {}
    for sub in ("images", "1st_manual", "mask"):
        (root / "training" / sub).mkdir(parents=True)
    for i in (21, 22):
        rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
        vessel = rng.random((7, 9)) < 0.3
        fov = np.ones((7, 9), bool)
        fov[0] = False
        Image.fromarray(rgb).save(root / f"training/images/{i}_training.tif")
        Image.fromarray(vessel.astype(np.uint8) * 255).save(root / f"training/1st_manual/{i}_manual1.gif")  # fmt: skip
        Image.fromarray(fov.astype(np.uint8) * 255).save(root / f"training/mask/{i}_training_mask.gif")  # fmt: skip
        made[f"{i}"] = (rgb, vessel, fov)
    grey = rng.integers(0, 4096, (7, 9), dtype=np.uint16)
    Image.fromarray(grey).save(root / "other.png")
    made["other"] = grey
    return made


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


DRIVE_ROWS = [
    ["image", "mask", "fov", "patient_id", "split", "grade"],
    ["training/images/21_training.tif", "training/1st_manual/21_manual1.gif",
     "training/mask/21_training_mask.gif", "P1", "train", "2"],
    ["training/images/22_training.tif", "training/1st_manual/22_manual1.gif",
     "training/mask/22_training_mask.gif", "P1", "test", "1"],
    ["other.png", "", "", "P2", "", ""],
]  # fmt: skip


def test_images_round_trip_with_masks_fov_patients_and_splits(
    tmp_path: Path, make_params: Callable[..., Params]
) -> None:
    made = _drive_like(tmp_path / "drive")
    labels = _write_csv(tmp_path / "drive.csv", DRIVE_ROWS)
    result = images.run(tmp_path / "drive", labels, tmp_path / "export", segment="vessel")
    assert (result.images, result.patients, result.segs) == (3, 2, 2)
    manifest, segments, out = _ingest(
        make_params, tmp_path, tmp_path / "export", target_ranges={"grade": [0, 2]}
    )
    manifest = manifest.sort_values("src").reset_index(drop=True)  # PA000001/ST1, ST2, PA000002
    assert manifest["official_split"].tolist() == ["train", "test", ""]
    assert manifest["label"].tolist() == [1, 1, 0]  # from the masks: vessels, none
    assert manifest["grade"].fillna(-1).tolist() == [2.0, 1.0, -1.0]
    assert manifest["patient_id"].nunique() == 2
    assert manifest.loc[0, "patient_id"] == manifest.loc[1, "patient_id"]
    for i, key in enumerate(("21", "22")):
        rgb, vessel, fov = made[key]
        row = manifest.loc[i]
        got = np.asarray(load_pixels(out, row))
        np.testing.assert_array_equal(got, np.moveaxis(rgb, -1, 0) / np.float32(255))
        mine = segments[segments["image_id"] == row["image_id"]].set_index("segment")
        np.testing.assert_array_equal(load_mask(out, mine.loc["vessel"]), vessel)
        np.testing.assert_array_equal(load_mask(out, mine.loc["fov"]), fov)
    np.testing.assert_array_equal(np.asarray(load_pixels(out, manifest.loc[2])), made["other"])
    assert manifest.loc[2, "image_id"] not in set(segments["image_id"])
    seg = pydicom.dcmread(next((tmp_path / "export/dicom").rglob("SG000001.dcm")))
    coded = [s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for s in seg.SegmentSequence]
    assert (seg.SegmentationType, coded) == ("BINARY", ["Blood Vessel", "Area of defined region"])


def test_cli_import_prints_the_params_lines(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    _drive_like(tmp_path / "drive")
    labels = _write_csv(tmp_path / "drive.csv", DRIVE_ROWS[:2])
    out = tmp_path / "export"
    got = CliRunner().invoke(
        app, ["import", "images", str(tmp_path / "drive"), "--labels", str(labels),
              "--out", str(out), "--segment", "vessel"],
    )  # fmt: skip
    assert got.exit_code == 0, got.output
    assert f"data.dicom_dir: {out.resolve() / 'dicom'}" in got.output
    assert f"data.labels_csv: {out.resolve() / 'labels.csv'}" in got.output
    assert "every image has label 1" in got.output  # one vessel image: one class only
    assert "no val images" in got.output


def test_export_headers_hold_no_names_or_dates_and_outputs_stay_out_of_the_input(
    tmp_path: Path,
) -> None:
    from pipeline.errors import UnsafeOutputError

    _drive_like(tmp_path / "drive")
    labels = _write_csv(tmp_path / "drive.csv", DRIVE_ROWS)
    images.run(tmp_path / "drive", labels, tmp_path / "export")
    for path in (tmp_path / "export/dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) == "" and ds.get("PatientBirthDate", "") == ""
        assert all(ds.get(k, "") == "" for k in ("StudyDate", "AccessionNumber"))
        assert ds.Manufacturer == "radops import"
    with pytest.raises(UnsafeOutputError):  # never inside (or over) the input folder
        images.run(tmp_path / "drive", labels, tmp_path / "drive/export")
    assert not (tmp_path / "drive/export").exists()


BAD_ROWS = {
    "mask size": (["image", "mask"], ["training/images/21_training.tif", "small.png"]),
    "matches no image": (["image", "mask"], ["", "training/1st_manual/21_manual1.gif"]),
    "cannot be read": (["image", "label"], ["broken.png", "1"]),
    "no column image": (["picture", "label"], ["training/images/21_training.tif", "1"]),
    "'..'": (["image", "label"], ["../outside.png", "1"]),
    "absolute path": (["image", "label"], ["/etc/hosts.png", "1"]),
    "no such file": (["image", "label"], ["missing.png", "1"]),
    "0 or 1": (["image", "label"], ["other.png", "3"]),
    "not a split name": (["image", "label", "split"], ["other.png", "1", "holdout"]),
}


BAD_IDS = ["mask-size", "mask-without-image", "unreadable", "no-image-column", "dotdot",
           "absolute", "missing-file", "bad-label", "bad-split"]  # fmt: skip


@pytest.mark.parametrize("problem", list(BAD_ROWS), ids=BAD_IDS)
def test_images_bad_inputs_are_one_line_errors(problem: str, tmp_path: Path) -> None:
    _drive_like(tmp_path / "drive")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "drive/small.png")
    (tmp_path / "drive/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "outside.png")
    header, row = BAD_ROWS[problem]
    labels = _write_csv(tmp_path / "bad.csv", [header, row])
    with pytest.raises(InputError) as exc:
        images.run(tmp_path / "drive", labels, tmp_path / "export")
    text = _one_line(exc)
    assert problem in text
    for cell in row[:1]:  # names the line and column, never echoes a path
        assert not cell or cell not in text
    assert not (tmp_path / "export").exists()


AFFINE = np.array([[0.8, 0, 0, -10], [0, 0.9, 0, 20], [0, 0, 2.5, -30], [0, 0, 0, 1.0]])


def _nifti_set(root: Path, volumes: list[Any], labels: list[Any], affine: Any = AFFINE) -> None:
    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for c, (data, label) in enumerate(zip(volumes, labels, strict=True)):
        nib.save(nib.Nifti1Image(data, affine), root / f"imagesTr/case{c}_0000.nii.gz")
        if label is not None:
            nib.save(nib.Nifti1Image(label, affine), root / f"labelsTr/case{c}.nii.gz")


def test_nifti_volumes_round_trip_as_series_with_segs(
    tmp_path: Path, make_params: Callable[..., Params]
) -> None:
    rng = np.random.default_rng(9)
    volumes = [rng.integers(-1000, 2000, (5, 4, 3)).astype(np.int16) for _ in range(2)]
    volumes.append(rng.normal(0, 1, (5, 4, 3)).astype(np.float32))  # rescaled to 16 bits
    labels = [np.zeros((5, 4, 3), np.uint8) for _ in range(3)]
    labels[0][1:3, 1:3, 1] = 1
    labels[1][0, 0, 2] = 1
    _nifti_set(tmp_path / "nii", volumes, labels)
    result = nifti.run(tmp_path / "nii", tmp_path / "export", modality="CT")
    assert (result.images, result.patients, result.segs) == (9, 3, 2)
    manifest, segments, out = _ingest(make_params, tmp_path, tmp_path / "export")
    number = manifest["src"].str.extract(r"PA(\d+)/ST000001/SE000001/IM(\d+)\.dcm").astype(int)
    manifest["volume"], manifest["slice"] = number[0] - 1, number[1] - 1
    assert manifest["patient_id"].nunique() == 3 and set(manifest["modality"]) == {"CT"}
    for _, row in manifest.iterrows():
        v, k = int(row["volume"]), int(row["slice"])
        want = volumes[v][:, :, k].T  # DICOM rows run along the volume's second axis
        got = np.asarray(load_pixels(out, row))
        step = (float(volumes[v].max()) - float(volumes[v].min())) / 65535
        np.testing.assert_allclose(got, want, atol=0 if v < 2 else step)
        assert row["label"] == int(labels[v][:, :, k].any())
        assert (row["pixel_spacing_row"], row["pixel_spacing_col"]) == (0.9, 0.8)
        assert (row["ipp_x"], row["ipp_y"], row["ipp_z"]) == (10.0, -20.0, -30.0 + 2.5 * k)
        mine = segments[segments["image_id"] == row["image_id"]]
        if row["label"]:
            np.testing.assert_array_equal(load_mask(out, mine.iloc[0]), labels[v][:, :, k].T > 0)
        else:
            assert mine.empty


def test_nifti_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    volume = np.zeros((4, 4, 2), np.int16)
    cases = {
        "have no label map": ([volume], [None]),
        "differs from the volume's": ([volume], [np.zeros((4, 4, 3), np.uint8)]),
        "only 3-D volumes": ([np.zeros((4, 4, 2, 2), np.int16)], [np.zeros((4, 4, 2), np.uint8)]),
        "whole numbers": ([volume], [np.full((4, 4, 2), 0.5, np.float32)]),
    }
    for i, (problem, (volumes, labels)) in enumerate(cases.items()):
        _nifti_set(tmp_path / f"in{i}", volumes, labels)
        with pytest.raises(InputError) as exc:
            nifti.run(tmp_path / f"in{i}", tmp_path / "export")
        assert problem in _one_line(exc)
        assert "case0" not in str(exc.value)  # volumes by position, never by file name
    assert not (tmp_path / "export").exists()


def test_same_input_same_image_files(tmp_path: Path) -> None:
    from tests.conftest import tree_digest

    _npz(tmp_path / "set.npz", colour=True, classes=2)
    medmnist.run(tmp_path / "set.npz", tmp_path / "a")
    medmnist.run(tmp_path / "set.npz", tmp_path / "b")
    assert tree_digest(tmp_path / "a/dicom") == tree_digest(tmp_path / "b/dicom")
    assert (tmp_path / "a/labels.csv").read_bytes() == (tmp_path / "b/labels.csv").read_bytes()
