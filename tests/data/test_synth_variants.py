"""The quality study's harder synth variants: subtler lesions, more noise, a held-out scanner;
and their defaults leave the cohort byte for byte as before."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from scipy.ndimage import binary_dilation

from pipeline.data import synth
from pipeline.data.synth_shift import new_site
from pipeline.data.synth_variants import HELD_OUT_SITE, WINDOW_FLOOR_HU
from pipeline.errors import ConfigError
from tests.conftest import build_params, tree_digest

# sha256 over every file (relative path + bytes) of the cohort below but labels.csv and
# radops' ownership marker, computed with main at d4603d9, where the digest of every file still
# equalled the one of the code before these params existed (main at 3aa9cb6); and of labels.csv
# without the finding_* columns added later for task.kind multilabel (same commit).
SKIPPED = ("labels.csv", ".radops-output")
GOLDEN = "5779a9d4eea1a44dfc63e5dd063af32acf61c58b5dd423daa37012437e721181"
GOLDEN_LABELS = "b33886e160f1199eb9c492cdab99db9f7586375b3690ceaf86b5e4addbcb714e"
GOLDEN_SYNTH = {"patients": 6, "image_size": 32, "seed": 11, "series_patients": 1,
                "series_image_size": 32}  # fmt: skip


def _cohort(tmp_path: Path, name: str, **synth_args: Any) -> Path:
    out = tmp_path / name
    params = build_params(tmp_path, synth=synth_args)
    synth.run(params, synth.Paths(out_dir=out))
    return out


def _images(root: Path) -> dict[str, pydicom.Dataset]:
    """Image datasets by path under dicom/ (the SEG objects left out)."""
    out = {}
    for path in sorted((root / "dicom").rglob("*")):
        if path.is_file():
            ds = pydicom.dcmread(path)
            if "StationName" in ds and ds.Modality == "CT":
                out[path.relative_to(root).as_posix()] = ds
    return out


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) - 1024.0


def _labels_without_findings(path: Path) -> str:
    rows = list(csv.reader(path.read_text().splitlines()))
    keep = [i for i, name in enumerate(rows[0]) if not name.startswith("finding_")]
    return hashlib.sha256(
        "\n".join(",".join(r[i] for i in keep) for r in rows).encode()
    ).hexdigest()


def test_defaults_keep_the_cohort_byte_identical(tmp_path: Path) -> None:
    implicit = _cohort(tmp_path, "implicit", **GOLDEN_SYNTH)
    explicit = _cohort(
        tmp_path, "explicit", **GOLDEN_SYNTH, lesion_contrast=1.0, noise_scale=1.0,
        test_scanner_shift=False,
    )  # fmt: skip
    assert tree_digest(implicit, SKIPPED) == tree_digest(explicit, SKIPPED) == GOLDEN
    for cohort in (implicit, explicit):
        assert _labels_without_findings(cohort / "labels.csv") == GOLDEN_LABELS
    assert "split" not in (implicit / "labels.csv").read_text().splitlines()[0]


def test_lower_lesion_contrast_makes_subtler_lesions(tmp_path: Path) -> None:
    args = {"patients": 8, "image_size": 64, "seed": 5, "series_patients": 1}
    plain = _images(_cohort(tmp_path, "plain", **args))
    subtle = _images(_cohort(tmp_path, "subtle", **args, lesion_contrast=0.5))
    assert plain.keys() == subtle.keys()
    window = (WINDOW_FLOOR_HU, WINDOW_FLOOR_HU + 400.0)  # what the default preprocessing sees
    contrasts: dict[str, list[float]] = {"plain": [], "subtle": []}
    unchanged = 0
    for rel in plain:
        a, b = _hu(plain[rel]), _hu(subtle[rel])
        lesion = np.abs(a - b) > 5  # the draws are shared: only lesion pixels differ
        if not lesion.any():
            unchanged += 1
            continue
        ring = binary_dilation(lesion, iterations=3) & ~lesion
        for name, img in (("plain", a), ("subtle", b)):
            w = np.clip(img, *window)
            contrasts[name].append(abs(float(w[lesion].mean() - w[ring].mean())))
    assert unchanged and len(contrasts["plain"]) >= 3  # images without a lesion: same bytes
    plain_c, subtle_c = np.mean(contrasts["plain"]), np.mean(contrasts["subtle"])
    assert plain_c > 50
    assert subtle_c < 0.75 * plain_c, (plain_c, subtle_c)


def test_noise_scale_raises_background_noise(tmp_path: Path) -> None:
    args = {"patients": 6, "image_size": 64, "seed": 5, "series_patients": 1}
    plain = _images(_cohort(tmp_path, "plain", **args))
    noisy = _images(_cohort(tmp_path, "noisy", **args, noise_scale=2.0))

    def background_sd(images: dict[str, pydicom.Dataset]) -> float:  # air in the corners
        sds = [np.std(_hu(ds)[np.r_[0:6, -6:0]][:, np.r_[0:6, -6:0]]) for ds in images.values()]
        return float(np.mean(sds))

    assert background_sd(noisy) > 1.4 * background_sd(plain)


def test_scanner_shift_puts_a_new_scanner_alone_in_test(tmp_path: Path) -> None:
    args = {"patients": 24, "image_size": 32, "seed": 3, "series_patients": 1}
    plain = _images(_cohort(tmp_path, "plain", **args))
    root = _cohort(tmp_path, "shifted", **args, test_scanner_shift=True)
    shifted = _images(root)
    held_out, moved = new_site().station, synth.SITES[HELD_OUT_SITE].station
    plain_site = {rel.split("/")[1]: str(ds.StationName) for rel, ds in plain.items()}
    for rel, ds in shifted.items():  # only the held-out site's patients are rescanned
        if str(ds.StationName) == held_out:
            assert plain_site[rel.split("/")[1]] == moved
        else:
            assert ds.PixelData == plain[rel].PixelData and ds.PatientID == plain[rel].PatientID
    kept = {rel for rel, ds in plain.items() if str(ds.StationName) != moved}
    assert kept <= shifted.keys() and len(kept) < len(plain)
    station = {str(ds.SOPInstanceUID): str(ds.StationName) for ds in shifted.values()}
    with (root / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(station) == {r["sop_instance_uid"] for r in rows}
    splits: dict[str, set[str]] = {}
    for row in rows:
        held = station[row["sop_instance_uid"]] == held_out
        assert (row["split"] == "test") is held, row
        splits.setdefault(row["split"], set()).add(row["patient_id"])
    assert set(splits) == {"train", "val", "test"}
    assert not (splits["train"] & splits["val"])  # patients kept whole
    assert {str(ds.StationName) for ds in shifted.values()} - {held_out} == {
        s.station for i, s in enumerate(synth.SITES) if i != HELD_OUT_SITE
    }


def test_scanner_shift_with_a_new_site_is_refused(tmp_path: Path) -> None:
    params = build_params(tmp_path, synth={"patients": 2, "new_site": True,
                                           "test_scanner_shift": True})  # fmt: skip
    with pytest.raises(ConfigError, match="test_scanner_shift"):
        synth.run(params, synth.Paths(out_dir=tmp_path / "c"))
