"""Synth hooks for data QA and drift monitoring: planted bad scans and a new site.

``synth.plant_bad_scans: N`` rewrites N of the written images (chosen with the synth seed) into
realistic bad scans of five kinds, cycling: ``wrong_rescale`` (RescaleIntercept 0 instead of
-1024: every value 1024 HU too high), ``flipped`` (upside down), ``blank`` (air only),
``body_part`` (a head slice: skull ring and brain, not a chest) and ``noise`` (a very noisy
acquisition, sigma 250 HU). Each keeps its label (so the default pipeline still runs). Which
files were planted is written to ``planted.csv`` beside ``dicom/`` (path under ``dicom/``,
kind): a truth file for tests and measurements, never ingested (ingest reads ``dicom/`` only).

``synth.new_site: true`` draws every patient from ``NEW_SITE`` instead of the four shipped
sites: another manufacturer, a finer pixel spacing and much heavier noise. A batch made so is
what ``radops monitor`` must call ``drift``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import catalog

if TYPE_CHECKING:
    import numpy as np

    from pipeline.data.synth_images import Site

BAD_KINDS = ("wrong_rescale", "flipped", "blank", "body_part", "noise")


def new_site() -> Site:
    from pipeline.data.synth_images import Site

    return Site(
        "Eastgate Imaging Centre", "3 Quarry Lane, Leeds LS1 4AB", "FUJIFILM", "FCT Supria",
        "EGICT9", 0.56, 3.0, (45.0, 60.0), ".dcm",
    )  # fmt: skip


def _head(rng: np.random.Generator, size: int) -> np.ndarray:
    """A crude axial head slice in HU: skull ring, brain, ventricles."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size / 2 + rng.normal(0, 1), size / 2 + rng.normal(0, 1)
    r = np.hypot((yy - cy) / (0.40 * size), (xx - cx) / (0.33 * size))
    img = np.full((size, size), -1000.0, dtype=np.float32)
    img[r <= 1.0] = 1100.0  # bone
    img[r <= 0.9] = 35.0  # brain
    vent = np.hypot((yy - cy) / (0.12 * size), (xx - cx) / (0.05 * size)) <= 1
    img[vent] = 5.0
    img = gaussian_filter(img, 0.7)
    return img + rng.normal(0, 10, (size, size)).astype(np.float32)


def plant_bad_scans(dicom_dir: Path, count: int, seed: int) -> list[tuple[str, str]]:
    """Rewrite ``count`` images under ``dicom_dir`` as bad scans; write ``planted.csv`` beside
    it; return ``(relative path, kind)`` pairs."""
    import numpy as np
    import pydicom

    from pipeline.data.seg_io import SEG_SOP_CLASS

    files = sorted(  # images only: the cohort's DICOM SEG objects are masks, not scans
        p
        for p in dicom_dir.rglob("*")
        if p.is_file() and pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID != SEG_SOP_CLASS
    )
    rng = np.random.default_rng([seed, 424242])
    chosen = rng.choice(len(files), size=min(count, len(files)), replace=False)
    planted: list[tuple[str, str]] = []
    for n, i in enumerate(sorted(int(c) for c in chosen)):
        path, kind = files[i], BAD_KINDS[n % len(BAD_KINDS)]
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.astype(np.float64)
        hu = stored - 1024.0
        size = int(ds.Rows)
        if kind == "wrong_rescale":
            ds.RescaleIntercept = "0"
        elif kind == "flipped":
            hu = hu[::-1]
        elif kind == "blank":
            hu = np.full_like(hu, -1000.0) + rng.normal(0, 5, hu.shape)
        elif kind == "body_part":
            hu = _head(rng, size).astype(np.float64)
        else:  # noise
            hu = hu + rng.normal(0, 250, hu.shape)
        ds.PixelData = np.clip(np.rint(hu + 1024.0), 0, 4095).astype("<i2").tobytes()
        ds.save_as(path, enforce_file_format=True)
        planted.append((path.relative_to(dicom_dir).as_posix(), kind))
    with (dicom_dir.parent / catalog.PLANTED_FILE).open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("path", "kind"))
        writer.writerows(planted)
    return planted
