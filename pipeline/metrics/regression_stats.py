"""Statistics of regressions, for ``evaluate`` and promotion.

Pure numpy/scipy functions of ``y`` (true values) and ``pred`` (predicted values, same
units). MAE, RMSE and R² get percentile CIs from the same patient-level bootstrap as the
AUCs in ``stats`` (a resample is a multiset of patients, each with all of its images, so the
statistics are computed with image weights). Promotion compares per-patient mean absolute
errors of two models on the same test images, by a one-sided Wilcoxon signed-rank test or a
paired patient-level bootstrap.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from pipeline.metrics.stats import Seed, bootstrap_weight_chunks, group_codes

PairedMethod = Literal["wilcoxon", "paired_bootstrap"]


def _arrays(y: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y, dtype=np.float64).ravel()
    p_arr = np.asarray(pred, dtype=np.float64).ravel()
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"targets and predictions differ in length: {y_arr.size} vs {p_arr.size}")
    return y_arr, p_arr


def weighted_errors(y: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """MAE, RMSE and R² for each row of ``weights`` (B×N image multiplicities).

    R² = 1 − SSE / SST about the (weighted) mean of ``y``; NaN where SST is 0."""
    err = pred - y
    total = weights.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mae = (weights * np.abs(err)).sum(axis=1) / total
        mse = (weights * err**2).sum(axis=1) / total
        mean_y = (weights * y).sum(axis=1) / total
        sst = (weights * (y[None, :] - mean_y[:, None]) ** 2).sum(axis=1)
        sse = (weights * err**2).sum(axis=1)
        r2 = np.where(sst > 1e-12, 1.0 - sse / np.where(sst > 1e-12, sst, 1.0), np.nan)
    return {"mae": mae, "rmse": np.sqrt(mse), "r2": r2}


def errors(y: Any, pred: Any) -> dict[str, float]:
    """MAE, RMSE, R² (as scikit-learn computes them), the mean error ``bias`` (predicted −
    true) and the Bland–Altman 95% limits of agreement ``loa_low``/``loa_high``."""
    y_arr, p_arr = _arrays(y, pred)
    if y_arr.size == 0:
        return dict.fromkeys(("mae", "rmse", "r2", "bias", "loa_low", "loa_high"), math.nan)
    out = {
        k: float(v[0]) for k, v in weighted_errors(y_arr, p_arr, np.ones((1, y_arr.size))).items()
    }
    diff = p_arr - y_arr
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if diff.size > 1 else math.nan
    return out | {"bias": bias, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


def bootstrap_error_cis(
    y: Any,
    pred: Any,
    groups: Any = None,
    n_iter: int = 1000,
    level: float = 0.95,
    seed: Seed = 0,
) -> dict[str, tuple[float, float, float]]:
    """``{"mae" | "rmse" | "r2": (value, low, high)}``: each statistic on all images and its
    percentile interval over patient-level bootstrap resamples."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    y_arr, p_arr = _arrays(y, pred)
    point = errors(y_arr, p_arr)
    codes = group_codes(groups, y_arr.size)
    chunks = [
        weighted_errors(y_arr, p_arr, w) for w in bootstrap_weight_chunks(codes, n_iter, seed)
    ]
    alpha = (1 - level) / 2
    out: dict[str, tuple[float, float, float]] = {}
    for key in ("mae", "rmse", "r2"):
        boot = np.concatenate([c[key] for c in chunks]) if chunks else np.zeros(0)
        boot = boot[np.isfinite(boot)]
        if boot.size == 0:
            out[key] = (point[key], math.nan, math.nan)
            continue
        low, high = np.quantile(boot, [alpha, 1 - alpha])
        out[key] = (point[key], float(low), float(high))
    return out


def patient_abs_errors(y: Any, pred: Any, groups: Any) -> np.ndarray:
    """The mean absolute error of each patient (patients in sorted id order)."""
    y_arr, p_arr = _arrays(y, pred)
    codes = group_codes(groups, y_arr.size)
    counts = np.bincount(codes)
    return np.bincount(codes, weights=np.abs(p_arr - y_arr)) / np.maximum(counts, 1)


def paired_abs_error_test(
    y: Any,
    pred_new: Any,
    pred_old: Any,
    groups: Any = None,
    method: PairedMethod = "wilcoxon",
    n_iter: int = 1000,
    seed: Seed = 0,
) -> tuple[float, float, float]:
    """``(mae_new, mae_old, p_value)`` for H1: the new model's per-patient absolute errors are
    smaller than the old model's (one-sided).

    ``wilcoxon``: signed-rank test on the per-patient differences old − new (zero differences
    dropped; all zero → p = 1). ``paired_bootstrap``: patients resampled with replacement; p =
    (1 + #{mean difference ≤ 0}) / (1 + B).
    """
    old = patient_abs_errors(y, pred_old, groups)
    new = patient_abs_errors(y, pred_new, groups)
    y_arr, p_new = _arrays(y, pred_new)
    mae_new = float(np.abs(p_new - y_arr).mean()) if y_arr.size else math.nan
    mae_old = float(np.abs(_arrays(y, pred_old)[1] - y_arr).mean()) if y_arr.size else math.nan
    diff = old - new  # > 0: the new model errs less on this patient
    if diff.size == 0 or np.allclose(diff, 0.0, atol=1e-12):
        return mae_new, mae_old, 1.0
    if method == "wilcoxon":
        from scipy.stats import wilcoxon

        result = wilcoxon(diff, alternative="greater", zero_method="wilcox")
        return mae_new, mae_old, float(result.pvalue)
    if method == "paired_bootstrap":
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, diff.size, size=(n_iter, diff.size))
        means = diff[draws].mean(axis=1)
        return mae_new, mae_old, float((1 + np.sum(means <= 0)) / (1 + n_iter))
    raise ValueError(f"unknown paired test {method!r}")
