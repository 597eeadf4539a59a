"""``radops predict`` with a segmentation model: one DICOM SEG per input image, plus areas.

Each scored image's predicted probability map is mapped back onto the image's own grid
(``seg_masks.to_source``), thresholded at 0.5 and written with highdicom as a ``BINARY`` SEG
that references the input's SOP Instance UID (and study, series, frame of reference), so any
viewer that reads SEG overlays it. The SEG goes back to the user's own system and therefore
carries the input's patient module, as a SEG must; it is written only into the output folder
``<predictions>_seg/`` beside the CSV, named by ``source_id``. The CSV gains, per segment,
the lesion count (8-connected components) and the area in mm² (on the source grid, with its
PixelSpacing), and ``seg_file``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import catalog
from pipeline.metrics.segmentation import THRESHOLD

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def write(
    out_csv: Path,
    input_dir: Path,
    manifest: pd.DataFrame,
    predictions: np.ndarray,
    stats: dict[str, Any],
    task: Any,
    path_of: dict[str, str],
) -> dict[str, np.ndarray]:
    """Write the SEGs into ``catalog.seg_output_dir(out_csv)``; return the CSV columns."""
    import pydicom
    from pydicom.uid import generate_uid
    from scipy.ndimage import label

    from pipeline.data.seg_io import build_seg
    from pipeline.data.seg_masks import to_source
    from pipeline.io import atomic_path, check_replaceable

    folder = catalog.seg_output_dir(out_csv)
    check_replaceable(folder, directory=True)
    names = list(task.chosen)
    columns: dict[str, list[Any]] = {f"{n}_{k}": [] for n in names for k in ("count", "area_mm2")}
    files: list[str] = []
    with atomic_path(folder, stage="predict") as staged:
        staged.mkdir(parents=True, exist_ok=True)
        for i, row in enumerate(manifest.itertuples()):
            rows, cols = int(row.rows), int(row.columns)  # type: ignore[arg-type]
            sp = (float(row.pixel_spacing_row), float(row.pixel_spacing_col))  # type: ignore[arg-type]
            masks = np.stack(
                [
                    to_source(predictions[i, s], rows, cols, stats, sp) > THRESHOLD
                    for s in range(len(names))
                ]
            )
            px = sp[0] * sp[1] if all(np.isfinite(sp)) else float("nan")
            for s, n in enumerate(names):
                columns[f"{n}_count"].append(label(masks[s], np.ones((3, 3), bool))[1])
                columns[f"{n}_area_mm2"].append(round(float(masks[s].sum()) * px, 3))
            source = pydicom.dcmread(input_dir / path_of[str(row.source_id)])
            if int(getattr(source, "NumberOfFrames", 1) or 1) > 1:
                files.append("")  # multi-frame inputs: areas only (no SEG written)
                continue
            seg = build_seg(
                source,
                masks,
                [n.capitalize() for n in names],
                series_uid=generate_uid(),
                sop_uid=generate_uid(),
                model=str(task.describe())[:64],
            )
            name = f"{row.source_id}.dcm"
            seg.save_as(staged / name, enforce_file_format=True)
            files.append(f"{folder.name}/{name}")
    log.info("predict: %d DICOM SEG objects -> %s", sum(1 for f in files if f), folder)
    out = {k: np.asarray(v) for k, v in columns.items()}
    return out | {"seg_file": np.asarray(files, dtype=object)}
