"""``radops import medmnist FILE.npz``: a MedMNIST archive into a DICOM export and labels file.

A MedMNIST ``.npz`` holds ``train_images``/``train_labels``, ``val_…`` and ``test_…``: images
N × H × W (grey) or N × H × W × 3 (colour), ``uint8``; labels N or N × 1 (one class per image)
or N × K (multi-label, 0/1). The official split goes into the ``split`` column (train, val,
test). MedMNIST has no patients: each image gets its own pseudonymous patient.

Labels (``--target``, default ``label``): radops' ``label`` is binary, so
- one class per image, ``--target label``: the classes must be 0 and 1, else the import stops
  and says to name a target column (``--target grade``);
- one class per image, ``--target NAME``: column ``NAME`` holds the class (0…K-1) and ``label``
  is 1 for any class above 0 (e.g. "any retinopathy" for RetinaMNIST's grades 0–4); ``NAME``
  must be declared in ``validate.target_ranges`` for ingest to keep it (printed as a note);
- multi-label (N × K): columns ``NAME_0`` … ``NAME_{K-1}`` hold the 0/1 flags and ``label`` is
  1 if any flag is set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.data.importers.common import check_target_name, modality_note, write_export
from pipeline.data.importers.export import ExportWriter, ImportResult, Item, digest
from pipeline.errors import InputError

SPLIT_KEYS = ("train", "val", "test")


def _load(npz: Path) -> dict[str, Any]:
    import numpy as np

    if not npz.is_file():
        raise InputError(f"MedMNIST file not found: {npz}")
    try:
        with np.load(npz, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # zip, pickle or format errors: one line, no traceback
        raise InputError(
            f"{npz}: not a readable MedMNIST .npz archive ({type(exc).__name__})"
        ) from None
    return arrays


def _splits(npz: Path, arrays: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(split, images, labels as N × K) for each split in the archive; refuses odd shapes."""
    import numpy as np

    found = []
    for split in SPLIT_KEYS:
        images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            missing = f"{split}_images" if images is None else f"{split}_labels"
            raise InputError(f"{npz}: has no array {missing} (MedMNIST keys: train_images, "
                             "train_labels, val_images, val_labels, test_images, test_labels)")  # fmt: skip
        grey = images.ndim == 3
        colour = images.ndim == 4 and images.shape[-1] == 3
        if not (grey or colour) or images.dtype != np.uint8:
            raise InputError(
                f"{npz}: {split}_images has shape {images.shape} and type {images.dtype}; "
                "expected N×H×W or N×H×W×3 uint8"
            )
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or len(labels) != len(images):
            raise InputError(
                f"{npz}: {split}_labels has shape {labels.shape} for {len(images)} images; "
                "expected N or N×K"
            )
        if labels.dtype.kind not in "iub" or (labels < 0).any():
            raise InputError(f"{npz}: {split}_labels must hold non-negative whole numbers")
        found.append((split, images, labels.astype(np.int64)))
    if not found:
        raise InputError(
            f"{npz}: no MedMNIST arrays (expected train_images/train_labels, val_…, test_…)"
        )
    if len({labels.shape[1] for _, _, labels in found}) > 1:
        raise InputError(f"{npz}: the splits' label arrays have different widths")
    return found


def run(
    npz: Path,
    out_dir: Path,
    *,
    modality: str = "US",
    spacing_mm: float = 0.5,
    target: str = "label",
) -> ImportResult:
    """Write ``out_dir/dicom/`` and ``out_dir/labels.csv`` from the MedMNIST archive ``npz``."""
    start = time.perf_counter()
    npz = Path(npz)
    check_target_name(target)
    arrays = _load(npz)
    splits = _splits(npz, arrays)
    width = splits[0][2].shape[1]
    top = max((int(labels.max()) for _, _, labels in splits if labels.size), default=0)
    if width > 1:
        if top > 1:
            raise InputError(f"{npz}: multi-label arrays must hold 0 or 1")
        columns: tuple[str, ...] = tuple(f"{target}_{k}" for k in range(width))
    elif target == "label":
        if top > 1:
            raise InputError(
                f"{npz}: the labels hold {top + 1} classes (0–{top}) but radops' label is "
                "binary; name a target column for the class, e.g. --target grade (label then "
                "marks any class above 0)"
            )
        columns = ()
    else:
        columns = (target,)
    notes = [modality_note(modality)]
    if columns:
        ranges = ", ".join(f"{c}: [0, {top}]" for c in columns)
        notes.append(
            f"ingest keeps a target column only if declared: validate.target_ranges: {{{ranges}}}"
        )
        if width == 1:
            notes.append(f"to learn the class: task.target: {target}")
    seed = digest("medmnist", npz.read_bytes())

    def write(writer: ExportWriter) -> None:
        n = 0
        for split, images, labels in splits:
            for pixels, row in zip(images, labels, strict=True):
                n += 1
                values = tuple(int(v) for v in row)
                label = int(any(v > 0 for v in values))
                writer.add(Item(pixels, f"IMP{n:07d}", split, label, values if columns else ()))

    return write_export(
        out_dir, [npz], write, modality=modality, spacing_mm=spacing_mm, seed=seed,
        targets=columns, notes=tuple(n for n in notes if n), start=start,
    )  # fmt: skip
