"""``radops import nifti DIR``: NIfTI volumes with label maps into DICOM series and SEGs.

The layout of most public segmentation sets (the Medical Segmentation Decathlon, nnU-Net):
``DIR/imagesTr/<case>.nii[.gz]`` and, of the same name, ``DIR/labelsTr/<case>.nii[.gz]``
(nnU-Net's channel suffix ``_0000`` on the image's name is allowed). Each volume becomes one
DICOM series of one pseudonymous patient: one file per slice along the volume's third axis,
with the geometry of its affine (NIfTI's RAS+ turned into DICOM's LPS: ``ImagePositionPatient``,
``ImageOrientationPatient``, ``PixelSpacing``, ``SliceThickness``). Voxel values are kept
exactly when they are whole numbers that fit 16 bits (signed or not); any other values are
stored as 16-bit integers with ``RescaleSlope``/``RescaleIntercept`` (within half a step of
the source, the step being the value range / 65535).

Label maps: voxels > 0 are foreground. With one value (1) the segment is ``--segment``
(default ``lesion``); with several, value *v* is segment ``<segment>_<v>``. Each slice with
foreground gets a ``BINARY`` SEG (every segment, some perhaps empty) and ``label`` 1; slices
without foreground get no SEG and ``label`` 0. ``split`` is left empty (radops splits by
patient, so a volume's slices stay together).

Refused with one line (``InputError``), naming volumes by their position in name order, never
by file name: a volume without a label map, a label map whose shape or affine differs from its
volume's, a label map with negative or fractional values, a 4-D volume, an unreadable file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.data.importers.common import modality_note, write_export
from pipeline.data.importers.export import ExportWriter, ImportResult, Item, Plane, digest
from pipeline.errors import InputError

if TYPE_CHECKING:
    import numpy as np

SUFFIXES = (".nii.gz", ".nii")
CHANNEL_SUFFIX = "_0000"  # nnU-Net names a case's first channel <case>_0000.nii.gz
LPS = (-1.0, -1.0, 1.0)  # NIfTI's RAS+ to DICOM's LPS


def _stem(name: str) -> str | None:
    return next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), None)


def _inside(root: Path, sub: str, what: str) -> Path:
    folder = root / sub
    real, base = os.path.realpath(folder), os.path.realpath(root)
    if os.path.isabs(sub) or os.path.commonpath([real, base]) != base:
        raise InputError(f"--{what} must be a folder inside {root}")
    if not folder.is_dir():
        raise InputError(f"{root}: no folder {sub} (the volumes' and label maps' folders)")
    return folder


def _pairs(images: Path, labels: Path) -> list[tuple[Path, Path]]:
    volumes = sorted(p for p in images.iterdir() if p.is_file() and _stem(p.name) is not None)
    if not volumes:
        raise InputError(f"{images}: no NIfTI volumes (.nii or .nii.gz)")
    pairs, missing = [], []
    for i, volume in enumerate(volumes, start=1):
        stem = str(_stem(volume.name))
        names = [stem] + ([stem[: -len(CHANNEL_SUFFIX)]] if stem.endswith(CHANNEL_SUFFIX) else [])
        found = [labels / f"{n}{s}" for n in names for s in SUFFIXES if (labels / f"{n}{s}").is_file()]  # fmt: skip
        if not found:
            missing.append(i)
        else:
            pairs.append((volume, found[0]))
    if missing:
        raise InputError(
            f"{images}: {len(missing)} of {len(volumes)} volumes have no label map of the same "
            f"name in {labels} (volume {missing[0]} in name order is the first)"
        )
    return pairs


def _load(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib
    import numpy as np

    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)  # type: ignore[attr-defined]
        affine = np.asarray(img.affine, dtype=np.float64)  # type: ignore[attr-defined]
    except Exception:
        raise InputError(f"{what}: the file cannot be read as NIfTI") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise InputError(f"{what}: a {data.ndim}-D volume; only 3-D volumes (one channel) are read")
    return data, affine


def _stored(data: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """16-bit integers and (slope, intercept): exact for whole numbers that fit."""
    import numpy as np

    finite = np.isfinite(data).all() if data.dtype.kind == "f" else True
    if not finite:
        raise InputError("a volume holds NaN or infinite values")
    lo, hi = float(data.min()), float(data.max())
    whole = data.dtype.kind in "iub" or bool((np.round(data) == data).all())
    if whole and lo >= -32768 and hi <= 32767:
        return data.astype(np.int16), (1.0, 0.0)
    if whole and lo >= 0 and hi <= 65535:
        return data.astype(np.uint16), (1.0, 0.0)
    slope = (hi - lo) / 65535 or 1.0
    scaled = np.round((data.astype(np.float64) - lo) / slope)
    return scaled.astype(np.uint16), (slope, lo)


def _planes(
    affine: np.ndarray, slices: int, rescale: tuple[float, float], window: Any
) -> list[Plane]:
    """Each slice's plane; NIfTI keeps its affine in single precision, so values are written
    as the shortest decimals that single precision reads back (0.9, not 0.8999999762)."""
    import numpy as np

    def f32(value: Any) -> float:
        return float(str(np.float32(value)))

    lps = np.diag(LPS) @ affine[:3]
    step_i, step_j, step_k = (np.linalg.norm(lps[:, a]) for a in range(3))
    orientation = tuple(f32(v) for v in (*lps[:, 0] / step_i, *lps[:, 1] / step_j))
    planes = []
    for k in range(slices):
        x, y, z = (f32(v) for v in lps @ np.array([0.0, 0.0, k, 1.0]))
        planes.append(
            Plane((x, y, z), orientation, (f32(step_j), f32(step_i)), f32(step_k), rescale, window)
        )
    return planes


def run(
    folder: Path,
    out_dir: Path,
    *,
    images_dir: str = "imagesTr",
    labels_dir: str = "labelsTr",
    modality: str = "MR",
    segment: str = "lesion",
) -> ImportResult:
    """Write ``out_dir/dicom/`` and ``out_dir/labels.csv`` from the volumes under ``folder``."""
    import numpy as np

    start = time.perf_counter()
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"NIfTI folder not found: {folder}")
    pairs = _pairs(
        _inside(folder, images_dir, "images-dir"), _inside(folder, labels_dir, "labels-dir")
    )
    values: set[int] = set()
    for i, (_, label_path) in enumerate(pairs, start=1):  # every label map checked first
        labels, _ = _load(label_path, f"label map of volume {i}")
        if (
            labels.dtype.kind == "f" and not (np.round(labels) == labels).all()
        ) or labels.min() < 0:
            raise InputError(f"label map of volume {i}: values must be whole numbers ≥ 0")
        values |= {int(v) for v in np.unique(labels) if v > 0}
    ordered = sorted(values)
    names = [segment] if ordered in ([], [1]) else [f"{segment}_{v}" for v in ordered]
    seed = digest("nifti", *(f"{p.name}:{p.stat().st_size}:{q.stat().st_size}" for p, q in pairs))
    notes = [modality_note(modality)]
    notes.append(f"to learn the masks: task.kind: segmentation, task.segments: [{', '.join(names)}]")  # fmt: skip

    def write(writer: ExportWriter) -> None:
        for n, (volume_path, label_path) in enumerate(pairs, start=1):
            data, affine = _load(volume_path, f"volume {n}")
            labels, label_affine = _load(label_path, f"label map of volume {n}")
            if labels.shape != data.shape:
                raise InputError(
                    f"label map of volume {n}: shape {labels.shape} differs from the volume's {data.shape}"
                )
            if not np.allclose(affine, label_affine, atol=1e-3):
                raise InputError(
                    f"label map of volume {n}: its affine (geometry) differs from the volume's"
                )
            stored, rescale = _stored(data)
            lo, hi = float(data.min()), float(data.max())
            planes = _planes(affine, data.shape[2], rescale, ((lo + hi) / 2, max(hi - lo, 1.0)))
            items = []
            for k in range(data.shape[2]):
                plane = labels[:, :, k].T
                masks = tuple(
                    (name, plane == v) for name, v in zip(names, ordered or [1], strict=True)
                )
                fg = bool((plane > 0).any())
                items.append(
                    Item(
                        np.ascontiguousarray(stored[:, :, k].T),
                        f"IMP{n:07d}",
                        "",
                        int(fg),
                        (),
                        masks if fg else (),
                    )
                )
            writer.add_series(items, planes)

    return write_export(
        out_dir, [folder], write, modality=modality, spacing_mm=1.0, seed=seed, targets=(),
        notes=tuple(n for n in notes if n), start=start,
    )  # fmt: skip
