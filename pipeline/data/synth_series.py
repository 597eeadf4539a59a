"""The synthetic *series* cohort: multi-slice CT series for ``task.kind: series_classification``.

Why a separate folder (``<synth.out_dir>/series/{dicom,labels.csv}``): the per-image default
(``data.dicom_dir`` = ``<synth.out_dir>/dicom``) must stay exactly as it is, so its images,
split and AUC do not move; the ``series`` stage reads this folder (``series.dicom_dir``).

Each patient has one axial chest series of 12–20 contiguous slices (one ``SeriesInstanceUID``,
``InstanceNumber`` 1..n in acquisition order), written as one file per slice under shuffled file
names (``IM<random>``), so file order says nothing about slice order. Geometry is realistic:
``ImagePositionPatient`` steps by the slice spacing along the slice normal (head-first or
feet-first at random), ``SliceThickness`` = the spacing (2–5 mm by site), and every eighth series
is *oblique* (gantry tilt 10–25°: ``ImageOrientationPatient`` columns tilted about x, so the
slice normal is not the z axis and ordering by z alone would be wrong for a tilted stack that
also shifts in y). Half of the patients carry a lesion (the per-image cohort's lesion model)
that spans 3–5 consecutive slices with a spherical profile (largest in its middle slice).
The anatomy is the same in every slice of a series (one seeded draw) with independent noise
per slice. ``labels.csv`` holds one row per slice: ``sop_instance_uid,patient_id,label`` (1 =
the lesion is visible in that slice); the series label follows by ``series.label_rule``.
Same seed, same bytes.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pipeline.config import SynthSection

SERIES_LABELS_HEADER = ("sop_instance_uid", "patient_id", "label")
SERIES_SPACING_MM = (2.5, 3.0, 5.0, 2.0)  # slice spacing = thickness, by site index
SLICES = (12, 20)  # inclusive range of slices per series
OBLIQUE_EVERY = 8  # patients p with p % 8 == 3 get an oblique (tilted) series


class SeriesCounts(NamedTuple):
    series: int
    slices: int
    positives: int
    oblique: int


def geometry(n: int, spacing: float, tilt_deg: float, direction: int, origin: Any) -> Any:
    """``(positions n×3, orientation 6)`` of a contiguous stack: rows along +x, columns tilted
    by ``tilt_deg`` about x; slice i at origin + direction·i·spacing·normal."""
    import numpy as np

    t = math.radians(tilt_deg)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, math.cos(t), math.sin(t)])
    normal = np.cross(row, col)
    steps = direction * spacing * np.arange(n)[:, None]
    return np.asarray(origin, dtype=np.float64) + steps * normal, np.concatenate([row, col])


def _ds(value: float) -> str:
    """A DS string (at most 16 characters)."""
    return f"{value:.6g}"


def write_cohort(cfg: SynthSection, out_dir: Path) -> SeriesCounts:
    """Write ``out_dir/dicom/PA*/ST*/SE*/IM*`` and ``out_dir/labels.csv``."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    from pipeline import catalog
    from pipeline.data import synth_images

    size = cfg.series_image_size
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    dicom_dir = out_dir / catalog.SYNTH_DICOM_DIR
    dicom_dir.mkdir(parents=True)
    series = slices = positives = oblique = 0
    with (out_dir / catalog.LABELS_FILE).open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(SERIES_LABELS_HEADER)
        for p in range(cfg.series_patients):
            rng = np.random.default_rng([cfg.seed, 5113, p])
            site_index = int(rng.integers(len(synth_images.SITES)))
            site = synth_images.SITES[site_index]
            patient = {
                "PatientName": f"{rng.choice(synth_images.LAST_NAMES)}^{rng.choice(synth_images.FIRST_NAMES)}",
                "PatientID": str(int(rng.integers(10_000_000, 100_000_000))),
                "PatientSex": str(rng.choice(["F", "M"])),
                "PatientBirthDate": f"{int(rng.integers(1935, 2000))}0{int(rng.integers(1, 10))}15",
            }
            study = {
                "StudyInstanceUID": synth_images._uid(rng),
                "AccessionNumber": str(int(rng.integers(10**9, 10**10))),
                "StudyID": str(int(rng.integers(1000, 100_000))),
                "StudyDate": f"202{int(rng.integers(0, 5))}0{int(rng.integers(1, 10))}1{int(rng.integers(0, 9))}",
                "StudyTime": f"{int(rng.integers(7, 19)):02d}3000",
                "PatientAge": f"{int(rng.integers(25, 85)):03d}Y",
                "ReferringPhysicianName": str(rng.choice(synth_images.PHYSICIANS)),
                "FrameOfReferenceUID": synth_images._uid(rng),
            }
            n = int(rng.integers(SLICES[0], SLICES[1] + 1))
            spacing = SERIES_SPACING_MM[site_index]
            tilt = float(rng.uniform(10, 25)) if p % OBLIQUE_EVERY == 3 else 0.0
            direction = int(rng.choice([-1, 1]))
            pixel = site.spacing_512 * 512 / size
            origin = [-pixel * size / 2, -pixel * size / 2, float(rng.uniform(-200, -100))]
            positions, orientation = geometry(n, spacing, tilt, direction, origin)
            in_lung = bool(rng.random() < 0.7)
            lesion = synth_images.Lesion(
                in_lung=in_lung,
                side=int(rng.choice([-1, 1])),
                rho=float(rng.uniform(0.0, 0.6)),
                theta=float(rng.uniform(0, 2 * math.pi)),
                radius_px=float(rng.uniform(6.0, 14.0)),
                value=float(rng.uniform(-30, 60) if in_lung else rng.uniform(80, 140)),
            )
            positive = bool(rng.random() < 0.5)
            half = int(rng.integers(1, 3))  # the lesion spans 2·half + 1 slices
            centre = int(rng.integers(half + 1, n - half - 1))
            anatomy = int(rng.integers(2**32))
            enhanced = bool(rng.random() < 0.5)
            series_uid, series_no = synth_images._uid(rng), int(rng.integers(2, 9))
            names = rng.permutation(10**6)[:n]  # shuffled file names
            folder = dicom_dir / f"PA{p + 1:06d}" / "ST000001" / f"SE{series_no:06d}"
            folder.mkdir(parents=True)
            base: np.ndarray | None = None
            ds: Any = None
            for i in rng.permutation(n):  # written in shuffled order too
                d = abs(int(i) - centre)
                here = positive and d <= half
                scaled = lesion._replace(
                    radius_px=lesion.radius_px * math.sqrt(max(0.0, 1 - (d / (half + 1)) ** 2))
                )
                if here or base is None:  # the lesion-free slice is rendered once
                    hu, _ = synth_images.render_image(
                        np.random.default_rng(anatomy),
                        size,
                        grid,
                        site,
                        enhanced,
                        scaled if here else None,
                    )
                    if not here:
                        base = hu
                hu = hu if here or base is None else base
                noise = gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 0.6)
                hu = hu + noise * (float(rng.uniform(*site.noise)) / max(float(noise.std()), 1e-6))
                sop = synth_images._uid(rng)
                if ds is None:  # one header per series; each slice changes what differs
                    ds = synth_images._dataset(rng, site, patient, study, 0, sop, hu, size)
                    ds.SeriesInstanceUID = series_uid
                    ds.SeriesNumber = series_no
                    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
                    ds.SliceThickness = _ds(spacing)
                    ds.SeriesDescription = f"CHEST {spacing:g}mm" + (" TILT" if tilt else "")
                ds.SOPInstanceUID = sop
                ds.file_meta.MediaStorageSOPInstanceUID = sop
                ds.PixelData = np.clip(np.rint(hu + 1024.0), 0, 4095).astype("<i2").tobytes()
                ds.InstanceNumber = int(i) + 1
                ds.ImagePositionPatient = [_ds(v) for v in positions[i]]
                ds.SliceLocation = _ds(float(positions[i][2]))
                ds.save_as(
                    folder / f"IM{int(names[i]):06d}{site.extension}", enforce_file_format=True
                )
                writer.writerow([sop, patient["PatientID"], int(here)])
                slices += 1
            series += 1
            positives += int(positive)
            oblique += int(tilt > 0)
    return SeriesCounts(series, slices, positives, oblique)
