"""``radops import images DIR --labels CSV``: a folder of PNG/JPEG/TIFF/GIF into a DICOM export.

The CSV (UTF-8) has one row per image. Columns (names case-insensitive):

- ``image`` (required): the file's path relative to ``DIR``. Absolute paths, ``..`` and links
  that lead out of ``DIR`` are refused. Grey (8 or 16 bits) and colour (RGB; palette and RGBA
  images are converted to RGB) are kept as they are; multi-frame files are refused.
- ``label``: 0 or 1. Optional when a ``mask`` column exists: ``label`` is then 1 for an image
  whose mask has a foreground pixel.
- ``mask``: a mask image of the same size (0 = background, one other value = foreground), or
  empty for an image without one. Written as a ``BINARY`` DICOM SEG (highdicom) with one segment
  named by ``--segment`` (default ``lesion``; e.g. ``vessel`` for DRIVE).
- ``fov``: a field-of-view mask (same rules). Kept as a second segment ``fov`` of the same SEG,
  so it travels with its image through ingest (paired, de-identified, accounted) and appears in
  ``segments.parquet`` beside the mask; ``task.segments`` decides what is learnt.
- ``patient_id``: images of one patient share it (the split keeps them together); without the
  column each image gets its own pseudonymous patient.
- ``split``: train, val (validation, valid), test, or empty: the dataset's official split.
- any other column: a numeric target (grade, size, ...), copied into ``labels.csv``; ingest
  keeps it if ``validate.target_ranges`` declares it (printed as a note).

Every problem is an ``InputError`` of one line naming the CSV line and column, never a cell's
content: a mask whose size differs from its image's, a mask on a row without an image, an
unreadable or missing file, a missing column, a value that is not a number or a split name.
"""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from pipeline.data.importers.common import check_target_name, modality_note, write_export
from pipeline.data.importers.export import ExportWriter, ImportResult, Item, digest
from pipeline.data.labels import SPLIT_ALIASES, SPLITS
from pipeline.data.labels import _rows as csv_rows
from pipeline.errors import InputError

if TYPE_CHECKING:
    import numpy as np

COLUMNS = ("image", "label", "mask", "fov", "patient_id", "split")
SUFFIXES = frozenset((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp"))
FOV_SEGMENT = "fov"


class _Where:
    """Names a CSV cell in errors: the file and line, never the value."""

    def __init__(self, csv: Path) -> None:
        self.csv = csv

    def __call__(self, line: int, column: str, problem: str) -> InputError:
        return InputError(f"labels file {self.csv}: line {line}, column '{column}': {problem}")


def _header(csv: Path, header: list[str]) -> dict[str, int]:
    names: dict[str, int] = {}
    for i, raw in enumerate(header):
        name = raw.strip()
        name = name.lower() if name.lower() in COLUMNS else name
        if not name:
            raise InputError(f"labels file {csv}: column {i + 1} has no name")
        if name in names:
            raise InputError(f"labels file {csv}: column '{name}' appears twice")
        names[name] = i
    if "image" not in names:
        raise InputError(
            f"labels file {csv} has no column image (the image's path relative to the folder; "
            "optional: label, mask, fov, patient_id, split and numeric targets)"
        )
    if "label" not in names and "mask" not in names:
        raise InputError(
            f"labels file {csv} has no column label (0 or 1; it may be left out when a mask "
            "column gives each image's mask)"
        )
    for name in names:
        if name not in COLUMNS:
            check_target_name(name)
    return names


def _path(root: Path, text: str, where: _Where, line: int, column: str) -> Path:
    """The file a cell names, inside ``root``; refuses absolute paths, ``..`` and escapes."""
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute():
        raise where(line, column, "an absolute path; give the path relative to the folder")
    if ".." in PurePosixPath(text.replace("\\", "/")).parts:
        raise where(line, column, "a path with '..'; give a path inside the folder")
    full = root / text
    real, base = os.path.realpath(full), os.path.realpath(root)
    if os.path.commonpath([real, base]) != base:
        raise where(line, column, "the path leads out of the folder (a link)")
    if not full.is_file():
        raise where(line, column, "no such file in the folder")
    if full.suffix.lower() not in SUFFIXES:
        raise where(line, column, "not a PNG, JPEG, TIFF, GIF or BMP file (by its extension)")
    return full


def _open(path: Path, where: _Where, line: int, column: str) -> Any:
    from PIL import Image

    try:
        img = Image.open(path)
        frames = getattr(img, "n_frames", 1)
        img.load()
    except Exception:  # truncated, not an image, a decompression bomb: one line
        raise where(line, column, "the file cannot be read as an image") from None
    if frames > 1:
        raise where(line, column, f"a multi-frame image ({frames} frames); give single frames")
    return img


def _pixels(img: Any, where: _Where, line: int) -> np.ndarray:
    """Grey uint8/uint16 (rows × cols) or RGB uint8 (rows × cols × 3), values as stored."""
    import numpy as np

    mode = img.mode
    if mode in ("1", "L", "LA"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16)
    if mode == "I":
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise where(line, "image", "32-bit values outside 0–65535 are not supported")
        return arr.astype(np.uint16)
    if mode == "F":
        raise where(line, "image", "floating-point images are not supported")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _mask(img: Any, shape: tuple[int, ...], where: _Where, line: int, column: str) -> np.ndarray:
    import numpy as np

    arr = np.asarray(img.convert("RGB") if img.mode in ("P", "PA") else img)
    if arr.ndim == 3:
        if not (arr == arr[..., :1]).all():
            raise where(line, column, "a colour mask; a mask is grey: 0 and one other value")
        arr = arr[..., 0]
    if arr.shape != tuple(shape[:2]):
        got, want = "×".join(map(str, arr.shape[::-1])), "×".join(map(str, shape[1::-1]))
        raise where(line, column, f"mask size {got} differs from its image's {want}")
    values = np.unique(arr)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        raise where(
            line, column, f"the mask has {len(values)} values; a binary mask has 0 and one other"
        )
    return arr != 0


def _number(text: str) -> float | None:
    import math

    if not text:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def run(
    folder: Path,
    labels_csv: Path,
    out_dir: Path,
    *,
    modality: str = "OT",
    spacing_mm: float = 1.0,
    segment: str = "lesion",
) -> ImportResult:
    """Write ``out_dir/dicom/`` and ``out_dir/labels.csv`` from the images that ``labels_csv``
    lists under ``folder``."""
    start = time.perf_counter()
    folder, labels_csv = Path(folder), Path(labels_csv)
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    if not labels_csv.is_file():
        raise InputError(f"labels file not found: {labels_csv}")
    if segment.strip().lower() == FOV_SEGMENT:
        raise InputError(f"--segment {FOV_SEGMENT} is the field-of-view segment; name the mask")
    header, rows = csv_rows(labels_csv)
    names = _header(labels_csv, header)
    where = _Where(labels_csv)
    targets = tuple(n for n in names if n not in COLUMNS)

    def cell(row: list[str], name: str) -> str:
        i = names.get(name)
        return row[i].strip() if i is not None and i < len(row) else ""

    # Check every row's text before any image is read or anything is written.
    seen: dict[str, int] = {}
    for line, row in rows:
        if not cell(row, "image"):
            column = next((c for c in ("mask", "fov") if cell(row, c)), "image")
            problem = "a mask that matches no image (column 'image' is empty)"
            raise where(line, column, problem if column != "image" else "empty")
        key = os.path.normpath(cell(row, "image"))
        if key in seen:
            raise where(line, "image", f"the same image as line {seen[key]}")
        seen[key] = line
        split = SPLIT_ALIASES.get(cell(row, "split").lower(), cell(row, "split").lower())
        if split not in ("", *SPLITS):
            raise where(line, "split", "not a split name (train, val, test or empty)")
        label = cell(row, "label")
        derived = "mask" in names and label == ""  # label from the mask
        if "label" in names and _number(label) not in (0.0, 1.0) and not derived:
            raise where(line, "label", "must be 0 or 1")
        for name in targets:
            if _number(cell(row, name)) is None:
                raise where(line, name, "must be a number (or empty)")
    notes = [modality_note(modality)]
    if targets:
        declared = ", ".join(f"{t}: [null, null]" for t in targets)
        notes.append(f"ingest keeps a target column only if declared: validate.target_ranges: {{{declared}}}")  # fmt: skip
    if "mask" in names:
        notes.append(
            f"to learn the mask: task.kind: segmentation, task.segments: [{segment.lower()}]"
        )
    seed = digest("images", labels_csv.read_bytes(), segment)

    def write(writer: ExportWriter) -> None:
        for n, (line, row) in enumerate(rows, start=1):
            img = _open(
                _path(folder, cell(row, "image"), where, line, "image"), where, line, "image"
            )
            pixels = _pixels(img, where, line)
            masks = []
            for column, name in (("mask", segment), ("fov", FOV_SEGMENT)):
                if cell(row, column):
                    path = _path(folder, cell(row, column), where, line, column)
                    masks.append((name, _mask(_open(path, where, line, column), pixels.shape, where, line, column)))  # fmt: skip
            text = cell(row, "label")
            label = (
                int(float(text))
                if text
                else int(bool(masks and masks[0][0] == segment and masks[0][1].any()))
            )
            split = SPLIT_ALIASES.get(cell(row, "split").lower(), cell(row, "split").lower())
            patient = cell(row, "patient_id") or f"IMP{n:07d}"
            values = tuple(cell(row, t) for t in targets)
            writer.add(Item(pixels, patient, split, label, values, tuple(masks)))

    return write_export(
        out_dir, [folder, labels_csv], write, modality=modality, spacing_mm=spacing_mm,
        seed=seed, targets=targets, notes=tuple(n for n in notes if n), start=start,
    )  # fmt: skip
