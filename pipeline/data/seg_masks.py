"""Preprocess for segmentation: each split's masks, resized exactly like its images.

``{split}_masks.npy`` is N × S × size × size uint8 (0/1), in the row order of
``{split}_x.npy``, one plane per segment name found in ``segments.parquet`` (sorted).
``{split}_masks.json`` says which planes are known (``known[i][s]``: image i's SEG has
segment s), the segment names and each image's pixel spacing after preprocessing (mm; what
HD95, ASSD and areas are measured in). A mask goes through the same geometry as its image
(resize with anti-aliasing, or resampling to ``spacing_mm``) as a float plane and is then
thresholded at 0.5: a pixel is foreground when more than half its area was.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.data.geometry import resample_to_mm

if TYPE_CHECKING:
    import pandas as pd


def resize_mask(mask: np.ndarray, stats: Mapping[str, Any], spacing: Any = None) -> np.ndarray:
    """One rows × cols 0/1 mask → size × size uint8, by the geometry ``prepare_image`` uses."""

    size = int(stats["image_size"])
    plane = np.asarray(mask, dtype=np.float32)
    if float(stats.get("spacing_mm", 0.0) or 0.0) > 0:
        out = resample_to_mm(plane, size, spacing, float(stats["spacing_mm"]))
    elif plane.shape != (size, size):
        from skimage.transform import resize

        out = resize(plane, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    else:
        out = plane
    return (np.asarray(out) > 0.5).astype(np.uint8)


def spacing_after(row: Any, stats: Mapping[str, Any]) -> tuple[float, float]:
    """(row, col) mm per pixel of a preprocessed image."""
    mm = float(stats.get("spacing_mm", 0.0) or 0.0)
    if mm > 0:
        return mm, mm
    size = int(stats["image_size"])
    return (
        float(row["pixel_spacing_row"]) * int(row["rows"]) / size,
        float(row["pixel_spacing_col"]) * int(row["columns"]) / size,
    )


def write_split_masks(
    out_dir: Path,
    split: str,
    part: pd.DataFrame,
    located: pd.DataFrame,
    ingest_dir: Path,
    stats: Mapping[str, Any],
) -> int:
    """Write ``{split}_masks.npy`` / ``.json`` for the images of ``part``; return the number
    of known mask planes (0 and nothing written when the ingest holds no SEG)."""
    from pipeline.data.seg_ingest import load_mask, load_segments
    from pipeline.io import write_json

    segments = load_segments(ingest_dir)
    if segments.empty:
        return 0
    names = sorted(segments["segment"].astype(str).unique())
    size = int(stats["image_size"])
    masks = np.zeros((len(part), len(names), size, size), dtype=np.uint8)
    known = np.zeros((len(part), len(names)), dtype=bool)
    by_image = segments.groupby("image_id")
    position = {n: s for s, n in enumerate(names)}
    spacing: list[list[float]] = []
    for i, image_id in enumerate(part["image_id"].astype(str)):
        loc = located.loc[image_id]
        spacing.append([round(v, 6) for v in spacing_after(loc, stats)])
        if image_id not in by_image.groups:
            continue
        raw = (float(loc["pixel_spacing_row"]), float(loc["pixel_spacing_col"]))  # type: ignore[arg-type]
        for _, seg_row in by_image.get_group(image_id).iterrows():
            s = position[str(seg_row["segment"])]
            masks[i, s] = resize_mask(load_mask(ingest_dir, seg_row), stats, raw)
            known[i, s] = True
    np.save(catalog.split_file(out_dir, split, catalog.MASKS_SUFFIX), masks)
    info = {"segments": names, "known": known.astype(int).tolist(), "spacing_mm": spacing}
    write_json(catalog.split_file(out_dir, split, catalog.MASK_INFO_SUFFIX), info)
    return int(known.sum())


def load_split_masks(data_dir: Path | str, split: str) -> tuple[np.ndarray, dict[str, Any]]:
    """``{split}_masks.npy`` (memory-mapped) and its info; InputError when absent."""
    import json

    from pipeline.errors import InputError

    path = catalog.split_file(data_dir, split, catalog.MASKS_SUFFIX)
    info_path = catalog.split_file(data_dir, split, catalog.MASK_INFO_SUFFIX)
    if not path.exists() or not info_path.exists():
        raise InputError(
            f"no masks in {data_dir} for the {split} split: segmentation needs DICOM SEG "
            "objects beside the images (ingest pairs them); rerun ingest and preprocess"
        )
    return np.load(path, mmap_mode="r"), json.loads(info_path.read_text())


def to_source(
    plane: np.ndarray,
    rows: int,
    cols: int,
    stats: Mapping[str, Any],
    spacing: tuple[float, float] | None = None,
) -> np.ndarray:
    """A preprocessed size × size map (probabilities) back onto the source image's rows ×
    cols grid (the inverse of ``resize_mask``'s geometry), bilinearly."""
    size = int(stats["image_size"])
    plane = np.asarray(plane, dtype=np.float32)
    mm = float(stats.get("spacing_mm", 0.0) or 0.0)
    if mm > 0 and spacing is not None:
        from scipy.ndimage import affine_transform

        factors = np.array([spacing[0] / mm, spacing[1] / mm])  # output pixel -> input pixels
        centre_out = (np.array([rows, cols], dtype=np.float64) - 1) / 2
        offset = (size - 1) / 2 - factors * centre_out
        return np.asarray(
            affine_transform(
                plane, factors, offset=offset, output_shape=(rows, cols), order=1, cval=0.0
            )
        )
    from skimage.transform import resize

    return np.asarray(resize(plane, (rows, cols), order=1, preserve_range=True))
