"""The flat test metrics of one segmentation model (per image and segment: Dice, IoU, HD95,
ASSD, areas, lesion detection; their patient-level bootstrap summary): what
``SegmentationTask.evaluation_summary`` returns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.metrics import seg_stats

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.config import EvaluateSection

# A pixel is foreground when its predicted probability exceeds this (evaluate, serve).
THRESHOLD = 0.5


def per_image(
    y: np.ndarray,
    pred: np.ndarray,
    groups: np.ndarray,
    spacing: np.ndarray | None,
    segments: Sequence[str],
) -> pd.DataFrame:
    """One row per image and segment: ``seg_stats.image_metrics`` plus patient and segment."""
    import pandas as pd

    y, pred = np.asarray(y) > 0.5, np.asarray(pred) > THRESHOLD
    sp = np.ones((len(y), 2)) if spacing is None else np.asarray(spacing, float)
    rows = []
    for i in range(len(y)):
        for s, name in enumerate(segments):
            m = seg_stats.image_metrics(pred[i, s], y[i, s], (sp[i, 0], sp[i, 1]))
            rows.append({"image": i, "patient_id": str(groups[i]), "segment": name, **m})
    return pd.DataFrame(rows)


def summary(
    table: pd.DataFrame,
    cfg: EvaluateSection,
    seed: Any,
    prefix: str,
    segments: Sequence[str],
) -> dict[str, float]:
    """The flat metrics (module docstring) with patient-level bootstrap CIs."""
    first = table[table["segment"] == segments[0]]
    groups = first["patient_id"].to_numpy()
    n_iter, level = cfg.bootstrap_iterations, cfg.ci_level
    out: dict[str, float] = {}
    rng = np.random.default_rng(seed) if not isinstance(seed, np.random.Generator) else seed
    state = int(rng.integers(2**31))
    has_lesion = (first["empty_true"] == 0).to_numpy()
    for name in ("dice", "iou", "hd95_mm", "assd_mm"):
        values = first[name].to_numpy(float)
        if name.endswith("_mm"):  # distances: images with a lesion (0 mm on empty-empty would
            values = np.where(has_lesion, values, np.nan)  # dilute them), both masks non-empty
        ok = np.isfinite(values)
        out[f"{prefix}_{name}"] = float(values[ok].mean()) if ok.any() else math.nan
        lo, hi = seg_stats.bootstrap_mean_ci(values, groups, n_iter, level, state)
        out[f"{prefix}_{name}_ci_low"], out[f"{prefix}_{name}_ci_high"] = lo, hi
    lesion = first[first["empty_true"] == 0]  # Dice where there is something to find
    out[f"{prefix}_dice_lesion_images"] = float(lesion["dice"].mean()) if len(lesion) else math.nan
    _, patient_dice = seg_stats.patient_means(first["dice"].to_numpy(float), groups)
    out[f"{prefix}_dice_patient"] = float(patient_dice.mean()) if patient_dice.size else math.nan
    err = first["area_error_mm2"].to_numpy(float)
    out[f"{prefix}_area_error_mm2"] = float(np.abs(err).mean()) if err.size else math.nan
    out[f"{prefix}_area_bias_mm2"] = float(err.mean()) if err.size else math.nan
    n_lesions = float(first["lesions"].sum())
    out[f"{prefix}_lesion_sensitivity"] = (
        float(first["detected"].sum()) / n_lesions if n_lesions else math.nan
    )
    out[f"{prefix}_fp_per_image"] = float(first["fp"].mean()) if len(first) else math.nan
    empty = first[first["empty_true"] > 0]
    out[f"{prefix}_empty_fp_rate"] = (
        float((empty["area_pred_mm2"] > 0).mean()) if len(empty) else math.nan
    )
    out[f"n_{prefix}"] = float(len(first))
    out[f"n_{prefix}_empty"] = float(len(empty))
    hd = first["hd95_mm"].to_numpy(float)
    out["n_surface_undefined"] = float((has_lesion & ~np.isfinite(hd)).sum())  # missed lesions
    for name in segments[1:]:
        out[f"{prefix}_dice_{name}"] = float(table.loc[table["segment"] == name, "dice"].mean())
    return out
