"""Statistics of K-class (K > 2) classifiers, for ``evaluate`` and promotion.

Pure numpy functions of ``y`` (class indices 0..K-1) and ``probs`` (N×K class
probabilities, rows summing to 1). AUCs are one-vs-rest: class k against all others, scored
by ``probs[:, k]``; the macro AUC is their unweighted mean. Bootstrap intervals and the
paired test resample *patients*, with the same machinery (and the same resamples for one
seed) as the binary AUC in ``stats``; a resample lacking a class has no macro AUC and is
skipped. Ratios with a zero denominator are NaN, as in ``stats``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.metrics.stats import (
    Seed,
    bootstrap_weight_chunks,
    group_codes,
    weighted_aucs,
)


def _arrays(y: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y).astype(np.int64).ravel()
    p_arr = np.asarray(probs, dtype=np.float64)
    if p_arr.ndim != 2 or p_arr.shape[0] != y_arr.size:
        raise ValueError(f"expected {y_arr.size}×K probabilities, got shape {p_arr.shape}")
    if y_arr.size and (y_arr.min() < 0 or y_arr.max() >= p_arr.shape[1]):
        raise ValueError(f"class indices must lie in 0..{p_arr.shape[1] - 1}")
    return y_arr, p_arr


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def ovr_aucs(y: Any, probs: Any) -> np.ndarray:
    """One-vs-rest AUC per class (NaN for a class absent from ``y`` or present alone)."""
    y_arr, p_arr = _arrays(y, probs)
    ones = np.ones((1, y_arr.size))
    return np.array(
        [
            weighted_aucs((y_arr == k).astype(np.int64), p_arr[:, k], ones)[0]
            for k in range(p_arr.shape[1])
        ]
    )


def macro_auc(y: Any, probs: Any) -> float:
    """The mean one-vs-rest AUC; NaN unless every class is present (and not alone)."""
    aucs = ovr_aucs(y, probs)
    return float(aucs.mean()) if np.isfinite(aucs).all() else math.nan


def confusion(y: Any, probs: Any) -> np.ndarray:
    """K×K counts: row = true class, column = predicted (arg-max) class."""
    y_arr, p_arr = _arrays(y, probs)
    k = p_arr.shape[1]
    pred = p_arr.argmax(axis=1)
    return np.bincount(y_arr * k + pred, minlength=k * k).reshape(k, k)


def class_metrics(y: Any, probs: Any) -> dict[str, Any]:
    """Arg-max decisions: ``accuracy``, ``f1_macro`` and per class ``sensitivity`` (recall)
    and ``ppv`` (precision), plus the ``confusion`` matrix."""
    matrix = confusion(y, probs)
    tp = np.diag(matrix).astype(np.float64)
    actual, called = matrix.sum(axis=1), matrix.sum(axis=0)
    sens = [_ratio(t, a) for t, a in zip(tp, actual, strict=True)]
    ppv = [_ratio(t, c) for t, c in zip(tp, called, strict=True)]
    # F1 per class = 2·TP / (2·TP + FP + FN) = 2·TP / (actual + called); 0 where undefined,
    # as scikit-learn's f1_score(average="macro", zero_division=0)
    f1 = [2 * t / (a + c) if a + c else 0.0 for t, a, c in zip(tp, actual, called, strict=True)]
    return {
        "confusion": matrix,
        "accuracy": _ratio(tp.sum(), matrix.sum()),
        "f1_macro": float(np.mean(f1)),
        "sensitivity": sens,
        "ppv": ppv,
    }


def bootstrap_ovr_aucs(
    y: Any, probs: list[Any], groups: Any = None, n_iter: int = 1000, seed: Seed = 0
) -> np.ndarray:
    """One-vs-rest AUCs over patient-level resamples: (n_iter, models, K); NaN where a
    resample lacks a class. All models see the same resamples."""
    y_arr = np.asarray(y).astype(np.int64).ravel()
    arrays = [_arrays(y_arr, p)[1] for p in probs]
    k = arrays[0].shape[1]
    onehot = [(y_arr == c).astype(np.int64) for c in range(k)]
    codes = group_codes(groups, y_arr.size)
    out = [
        np.stack(
            [
                np.column_stack([weighted_aucs(onehot[c], p[:, c], w) for c in range(k)])
                for p in arrays
            ],
            axis=1,
        )
        for w in bootstrap_weight_chunks(codes, n_iter, seed)
    ]
    return np.concatenate(out) if out else np.zeros((0, len(arrays), k))


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_auc_cis(
    y: Any,
    probs: Any,
    groups: Any = None,
    n_iter: int = 1000,
    level: float = 0.95,
    seed: Seed = 0,
) -> dict[str, Any]:
    """Macro and per-class one-vs-rest AUCs with percentile CIs from one patient-level
    bootstrap: ``{"macro": (auc, low, high), "per_class": [(auc, low, high), ...]}``."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    aucs = ovr_aucs(y, probs)
    boot = bootstrap_ovr_aucs(y, [probs], groups, n_iter, seed)[:, 0, :]
    macro_boot = boot.mean(axis=1)  # NaN when any class is missing from a resample
    macro = float(aucs.mean()) if np.isfinite(aucs).all() else math.nan
    per_class = [(float(aucs[c]), *_interval(boot[:, c], level)) for c in range(aucs.size)]
    return {"macro": (macro, *_interval(macro_boot, level)), "per_class": per_class}


def paired_bootstrap_macro_auc(
    y: Any,
    probs_a: Any,
    probs_b: Any,
    groups: Any = None,
    n_iter: int = 1000,
    seed: Seed = 0,
) -> tuple[float, float]:
    """``(delta, p_value)`` for H1: model A has a higher macro AUC than model B (one-sided):
    both scored on the same patient-level resamples; p = (1 + #{Δ* ≤ 0}) / (1 + B)."""
    delta = macro_auc(y, probs_a) - macro_auc(y, probs_b)
    boot = bootstrap_ovr_aucs(y, [probs_a, probs_b], groups, n_iter, seed).mean(axis=2)
    diffs = boot[:, 0] - boot[:, 1]
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return delta, math.nan
    return delta, float((1 + np.sum(diffs <= 0)) / (1 + diffs.size))


def macro_roc_curve(y: Any, probs: Any, points: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """The macro-average ROC curve ``(fpr, tpr)``: each class's one-vs-rest TPR interpolated
    on a common FPR grid, then averaged (classes absent from ``y`` are skipped)."""
    from sklearn.metrics import roc_curve

    y_arr, p_arr = _arrays(y, probs)
    grid = np.linspace(0.0, 1.0, points)
    curves = []
    for k in range(p_arr.shape[1]):
        hit = y_arr == k
        if hit.all() or not hit.any():
            continue
        fpr, tpr, _ = roc_curve(hit.astype(int), p_arr[:, k])
        curves.append(np.interp(grid, fpr, tpr))
    tpr_mean = np.mean(curves, axis=0) if curves else np.full(points, np.nan)
    tpr_mean[0] = 0.0
    return grid, tpr_mean
