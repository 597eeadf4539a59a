"""Small non-CT cohorts for the intensity and plan tests: the fake ingest output of
``tests/data/conftest.py`` with its pixels and header fields replaced (8-bit DX, ultrasound,
colour), so the stages see what ingest writes for such images."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.pixels import ShardWriter
from tests.data.conftest import build_fake_ingest, write_manifest


def xray_8bit(rng: np.random.Generator, size: int, positive: bool) -> np.ndarray:
    """An 8-bit radiograph (0-255, higher is brighter): a dark background, a mid-grey body and
    bright bone near the top of the range; positives carry an opacity at 240-255."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    img = np.full((size, size), 20.0, dtype=np.float32)
    img[(xx / 0.45) ** 2 + (yy / 0.45) ** 2 <= 1.0] = 120.0
    img[np.abs(xx) < 0.05] = 235.0  # a spine-like bright band
    img += rng.normal(0.0, 6.0, img.shape).astype(np.float32)
    if positive:
        img[(yy - 0.1) ** 2 + (xx - 0.2) ** 2 <= 0.01] = 250.0
    return np.clip(np.round(img), 0, 255).astype(np.float32)


def fundus_rgb(rng: np.random.Generator, size: int, positive: bool) -> np.ndarray:
    """A colour fundus-like image, RGB in [0, 1] (3 x H x W, as ingest stores colour): red-heavy
    disc on black, green and blue dim."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    disc = ((xx**2 + yy**2) <= 0.2).astype(np.float32)
    noise = rng.normal(0.0, 0.02, (3, size, size)).astype(np.float32)
    rgb = np.stack([0.7 * disc, 0.3 * disc, 0.1 * disc]) + noise
    if positive:
        rgb[:, (yy - 0.1) ** 2 + (xx + 0.1) ** 2 <= 0.005] += 0.2
    return np.clip(rgb, 0, 1).astype(np.float32)


def build_cohort(
    out_dir: Path,
    modality: str,
    make: Callable[[np.random.Generator, int, bool], np.ndarray] | None = None,
    *,
    n_patients: int = 24,
    size: int = 40,
    bits_stored: int = 8,
    photometric: str = "MONOCHROME2",
    spacing: float = 0.2,
) -> pd.DataFrame:
    """The fake ingest output with every image replaced by ``make(rng, size, positive)``
    (grey 2-D, or 3 x H x W RGB) and the header fields of ``modality``. ``make`` None keeps
    the fake CT images (HU)."""
    manifest = build_fake_ingest(out_dir, n_patients=n_patients, size=size)
    if make is None:
        return manifest
    rng = np.random.default_rng(1)
    for path in (out_dir / "pixels").iterdir():
        path.unlink()
    rows = []
    with ShardWriter(out_dir, 0) as shard:
        for _, row in manifest.iterrows():
            pixels = make(rng, size, int(row["label"]) == 1)
            rel, offset = shard.add(pixels)
            rows.append(
                row.to_dict()
                | {
                    "modality": modality,
                    "bits_allocated": 8 if bits_stored <= 8 else 16,
                    "bits_stored": bits_stored,
                    "pixel_representation": 0,
                    "photometric": photometric,
                    "channels": 3 if pixels.ndim == 3 else 1,
                    "pixel_spacing_row": spacing,
                    "pixel_spacing_col": spacing,
                    "pixel_path": rel,
                    "pixel_offset": offset,
                    "pixel_min": float(pixels.min()),
                    "pixel_max": float(pixels.max()),
                    "pixel_mean": float(pixels.mean()),
                    "pixel_std": float(pixels.std()),
                    "pixel_sha256": hashlib.sha256(pixels.astype("<f4").tobytes()).hexdigest(),
                }
            )
    frame = pd.DataFrame(rows)
    write_manifest(out_dir, frame)
    return frame
