"""Segmentation statistics: overlap, surface distances in mm, areas, lesion detection, CIs.

Definitions (one binary mask pair per image and segment; spacing = (row, col) mm per pixel):

* Dice = 2|P∩T| / (|P|+|T|), IoU = |P∩T| / |P∪T|; both empty → 1 (a correct "nothing").
* Surfaces are the mask XOR its erosion (scipy's cross structuring element), distances
  Euclidean in mm (``distance_transform_edt`` with ``sampling``), as MONAI computes them:
  HD95 = max of the two directed 95th percentiles, ASSD = mean of both directions' distances.
  Both empty → 0 mm; exactly one empty → undefined (NaN). The reported means are over images
  with a lesion that the model also marks (``n_surface_undefined`` counts the missed ones); an
  empty image is judged by the FP counts instead.
* Area (mm²) = pixels × row spacing × col spacing; area error = predicted − true.
* Lesions are 8-connected components. A true lesion is detected when a predicted component
  overlaps it with IoU ≥ ``LESION_IOU``; a predicted component matching no true lesion is a
  false positive, on empty images too (counted, never divided by zero).
* Means over images with patient-level bootstrap CIs (patients resampled, all their images
  kept); promotion compares per-patient mean Dice, paired (Wilcoxon or bootstrap).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

LESION_IOU = 0.1
PairedMethod = Literal["wilcoxon", "paired_bootstrap"]


def overlap(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(Dice, IoU) of two boolean masks; 1.0 both when both are empty."""
    p, t = np.asarray(pred, bool), np.asarray(true, bool)
    inter, total = np.count_nonzero(p & t), np.count_nonzero(p) + np.count_nonzero(t)
    if total == 0:
        return 1.0, 1.0
    return 2 * inter / total, inter / (total - inter)


def dice_per_image(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-image Dice of N boolean masks against N truths (``overlap`` row by row, in one
    vectorised pass: 1.0 where both are empty)."""
    p = np.asarray(pred, bool).reshape(len(pred), -1)
    t = np.asarray(true, bool).reshape(len(true), -1)
    inter, total = (p & t).sum(1), p.sum(1) + t.sum(1)
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


def _edges(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return mask ^ binary_erosion(mask)


def surface_distances(
    pred: np.ndarray, true: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)
) -> tuple[float, float]:
    """(HD95, ASSD) in mm; (0, 0) if both masks are empty, (NaN, NaN) if one is."""
    from scipy.ndimage import distance_transform_edt

    p, t = np.asarray(pred, bool), np.asarray(true, bool)
    if not p.any() and not t.any():
        return 0.0, 0.0
    if not p.any() or not t.any():
        return math.nan, math.nan
    ep, et = _edges(p), _edges(t)
    d_pt = distance_transform_edt(~et, sampling=spacing)[ep]
    d_tp = distance_transform_edt(~ep, sampling=spacing)[et]
    hd95 = max(float(np.percentile(d_pt, 95)), float(np.percentile(d_tp, 95)))
    assd = float(np.concatenate([d_pt, d_tp]).mean())
    return hd95, assd


def lesions(pred: np.ndarray, true: np.ndarray, iou: float = LESION_IOU) -> tuple[int, int, int]:
    """(true lesions, detected ones, false-positive components) by 8-connectivity."""
    from scipy.ndimage import label

    structure = np.ones((3, 3), dtype=bool)
    lt, nt = label(np.asarray(true, bool), structure)
    lp, npred = label(np.asarray(pred, bool), structure)
    matched_pred: set[int] = set()
    detected = 0
    for i in range(1, nt + 1):
        comp = lt == i
        hit = False
        for j in np.unique(lp[comp]):
            if j == 0:
                continue
            pc = lp == j
            inter = np.count_nonzero(comp & pc)
            if inter / np.count_nonzero(comp | pc) >= iou:
                hit = True
                matched_pred.add(int(j))
        detected += hit
    for j in range(1, npred + 1):  # a component touching a lesion, below the IoU: not an FP
        if j not in matched_pred and (lt[lp == j] > 0).any():
            matched_pred.add(j)
    return nt, detected, npred - len(matched_pred)


def image_metrics(
    pred: np.ndarray, true: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)
) -> dict[str, float]:
    """Every per-image number for one mask pair (see the module docstring)."""
    dice, iou = overlap(pred, true)
    hd95, assd = surface_distances(pred, true, spacing)
    n_true, detected, fp = lesions(pred, true)
    px = float(spacing[0]) * float(spacing[1])
    area_t, area_p = float(np.count_nonzero(true)) * px, float(np.count_nonzero(pred)) * px
    return {
        "dice": dice,
        "iou": iou,
        "hd95_mm": hd95,
        "assd_mm": assd,
        "area_true_mm2": area_t,
        "area_pred_mm2": area_p,
        "area_error_mm2": area_p - area_t,
        "lesions": float(n_true),
        "detected": float(detected),
        "fp": float(fp),
        "empty_true": float(area_t == 0),
    }


def patient_means(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patient ids sorted, mean of ``values`` per patient)."""
    ids, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    sums = np.bincount(codes, weights=np.asarray(values, float), minlength=len(ids))
    return ids, sums / np.bincount(codes, minlength=len(ids))


def bootstrap_mean_ci(
    values: np.ndarray, groups: np.ndarray, n_iter: int, level: float, seed: Any
) -> tuple[float, float]:
    """Patient-level bootstrap CI of the image mean of ``values`` (NaN values left out)."""
    v = np.asarray(values, float)
    ok = np.isfinite(v)
    if not ok.any():
        return math.nan, math.nan
    _, codes = np.unique(np.asarray(groups).astype(str)[ok], return_inverse=True)
    n = codes.max() + 1
    sums = np.bincount(codes, weights=v[ok], minlength=n)
    counts = np.bincount(codes, minlength=n).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_iter, n))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_dice_test(
    dice_new: np.ndarray,
    dice_old: np.ndarray,
    groups: np.ndarray,
    method: PairedMethod = "wilcoxon",
    n_iter: int = 1000,
    seed: Any = 0,
) -> tuple[float, float, float]:
    """``(mean patient Dice new, old, one-sided p)`` for H1: the new model's per-patient
    mean Dice is higher."""
    _, new = patient_means(dice_new, groups)
    _, old = patient_means(dice_old, groups)
    diff = new - old
    a, b = float(new.mean()) if new.size else math.nan, float(old.mean()) if old.size else math.nan
    if diff.size == 0 or np.allclose(diff, 0.0, atol=1e-12):
        return a, b, 1.0
    if method == "wilcoxon":
        from scipy.stats import wilcoxon

        return a, b, float(wilcoxon(diff, alternative="greater", zero_method="wilcox").pvalue)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n_iter, diff.size))].mean(axis=1)
    return a, b, float((1 + np.sum(means <= 0)) / (1 + n_iter))
