"""Classification statistics used by ``evaluate`` and by model promotion.

Everything here is a pure function of numpy arrays, so that the numbers in a report or a
promotion decision can be checked against scikit-learn and against textbook formulas in the
unit tests. Conventions:

* ``y`` holds 0/1 labels, ``prob`` the predicted probability (or any score where higher means
  "more likely positive"); an image is called positive when ``prob >= threshold``.
* A ratio whose denominator is zero (e.g. PPV when nothing is called positive) is ``NaN``,
  never 0 or 1: a report must not claim a perfect or a useless value that was not measured.
* Confidence intervals and paired tests resample *patients* (clusters), not images, because
  images of one patient are correlated; treating them as independent would make the interval
  too narrow and the tests too eager to promote.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

Alternative = Literal["two-sided", "greater"]
# A bootstrap seed: an int, or a Generator that is drawn from (``default_rng`` passes it
# through), so one generator can drive several bootstraps in turn.
Seed = int | np.random.Generator
_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000  # bootstrap weights are built in chunks of this size


def _as_arrays(y: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y).astype(np.int64).ravel()
    p_arr = np.asarray(prob, dtype=np.float64).ravel()
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"labels and scores differ in length: {y_arr.size} vs {p_arr.size}")
    if not np.isin(y_arr, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y_arr, p_arr


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def roc_auc(y: Any, prob: Any) -> float:
    """ROC AUC, or NaN when only one class is present (AUC is undefined then)."""
    from sklearn.metrics import roc_auc_score

    y_arr, p_arr = _as_arrays(y, prob)
    if np.unique(y_arr).size < 2:
        return math.nan
    return float(roc_auc_score(y_arr, p_arr))


def binary_metrics(y: Any, prob: Any, threshold: float) -> dict[str, float]:
    """Confusion matrix and the usual rates at ``threshold`` (positive when ``prob >= threshold``).

    Returns ``tn, fp, fn, tp, n, sensitivity, specificity, ppv, npv, f1, accuracy``; a rate with
    a zero denominator is NaN (e.g. sensitivity in a subgroup without positives).
    """
    y_arr, p_arr = _as_arrays(y, prob)
    pred = p_arr >= threshold
    pos = y_arr == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    tn = int(np.sum(~pred & ~pos))
    return {
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
        "n": int(y_arr.size),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, y_arr.size),
    }


def choose_threshold(
    y_val: Any,
    prob_val: Any,
    method: Literal["youden", "sensitivity"] = "youden",
    target_sensitivity: float = 0.9,
) -> float:
    """The operating threshold, chosen on validation data only (never on test).

    ``youden``: the threshold maximising Youden's J = sensitivity + specificity - 1; among
    ties the highest threshold (fewest false positives). ``sensitivity``: the highest threshold
    whose sensitivity reaches ``target_sensitivity`` (a screening operating point). Thresholds
    are observed scores, so ``prob >= threshold`` reproduces the chosen point exactly.
    """
    from sklearn.metrics import roc_curve

    y_arr, p_arr = _as_arrays(y_val, prob_val)
    if np.unique(y_arr).size < 2:
        raise ValueError("choosing a threshold needs both classes in the validation labels")
    fpr, tpr, thresholds = roc_curve(y_arr, p_arr, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if method == "youden":
        j = tpr - fpr
        # thresholds descend, so the first (near-)maximum is the highest tied threshold
        best = int(np.flatnonzero(j >= j.max() - 1e-12)[0])
    elif method == "sensitivity":
        if not 0 < target_sensitivity <= 1:
            raise ValueError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
        best = int(np.flatnonzero(tpr >= target_sensitivity - 1e-12)[0])
    else:
        raise ValueError(f"unknown threshold method {method!r}")
    return float(thresholds[best])


def brier_score(y: Any, prob: Any) -> float:
    """Mean squared error of the probabilities (lower is better; 0.25 for a constant 0.5).
    N×K class probabilities (K ≥ 2) give the multiclass Brier score: the squared distance to
    the one-hot label summed over the classes, averaged over the images."""
    from sklearn.metrics import brier_score_loss

    p2 = np.asarray(prob, dtype=np.float64)
    if p2.ndim == 2:
        labels = np.asarray(y).astype(np.int64).ravel()
        return float(np.mean(np.sum((p2 - np.eye(p2.shape[1])[labels]) ** 2, axis=1)))
    y_arr, p_arr = _as_arrays(y, prob)
    return float(brier_score_loss(y_arr, np.clip(p_arr, 0.0, 1.0)))


def calibration(y: Any, prob: Any, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Reliability curve ``(mean_predicted, fraction_positive)`` over equal-width bins."""
    from sklearn.calibration import calibration_curve

    y_arr, p_arr = _as_arrays(y, prob)
    frac_pos, mean_pred = calibration_curve(
        y_arr, np.clip(p_arr, 0.0, 1.0), n_bins=n_bins, strategy="uniform"
    )
    return mean_pred, frac_pos


def roc_points(y: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of the ROC curve, for plotting."""
    from sklearn.metrics import roc_curve

    y_arr, p_arr = _as_arrays(y, prob)
    fpr, tpr, _ = roc_curve(y_arr, p_arr)
    return fpr, tpr


# --------------------------------------------------------------------------- bootstrap


def group_codes(groups: Any, n: int) -> np.ndarray:
    """Integer cluster code per image; each image is its own cluster when ``groups`` is None."""
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups).ravel()
    if g.size != n:
        raise ValueError(f"groups has {g.size} entries for {n} images")
    return np.unique(g, return_inverse=True)[1].ravel()


def weighted_aucs(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC for each row of ``weights`` (B×N image multiplicities), ties counted as 1/2.

    Equivalent to replicating image i ``weights[b, i]`` times and computing the Mann–Whitney
    AUC, but done for all B resamples at once from one sort of the scores.
    """
    order = np.argsort(score, kind="mergesort")
    s, yy, w = score[order], y[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos_w = np.add.reduceat(w * yy, starts, axis=1)
    neg_w = np.add.reduceat(w * (1 - yy), starts, axis=1)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    num = np.sum(pos_w * (neg_below + 0.5 * neg_w), axis=1)
    n_pos, n_neg = pos_w.sum(axis=1), neg_w.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = num / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def bootstrap_weight_chunks(codes: np.ndarray, n_iter: int, seed: Seed) -> Any:
    """Yield B×N image multiplicities of patient-level resamples, a chunk at a time.

    ``codes`` are the integer cluster codes of ``group_codes``; the task-specific statistics
    (multi-class AUC, regression errors) use the same resamples as the binary AUC."""
    rng = np.random.default_rng(seed)
    n_groups = int(codes.max()) + 1 if codes.size else 0
    per_chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // max(1, codes.size + n_groups))
    done = 0
    while done < n_iter:
        b = min(per_chunk, n_iter - done)
        draws = rng.integers(0, n_groups, size=(b, n_groups))
        flat = (draws + np.arange(b)[:, None] * n_groups).ravel()
        counts = np.bincount(flat, minlength=b * n_groups).reshape(b, n_groups)
        yield counts[:, codes].astype(np.float64)
        done += b


def bootstrap_aucs(
    y: Any, probs: list[Any], groups: Any = None, n_iter: int = 1000, seed: Seed = 0
) -> np.ndarray:
    """AUCs of each score array over the same patient-level resamples: an (n_iter, k) array.

    Resamples with one class only give NaN rows (the AUC does not exist there).
    """
    y_arr = np.asarray(y).astype(np.int64).ravel()
    scores = [_as_arrays(y_arr, p)[1] for p in probs]
    codes = group_codes(groups, y_arr.size)
    out = [
        np.column_stack([weighted_aucs(y_arr, s, w) for s in scores])
        for w in bootstrap_weight_chunks(codes, n_iter, seed)
    ]
    return np.vstack(out) if out else np.zeros((0, len(scores)))


def bootstrap_auc_ci(
    y: Any,
    prob: Any,
    groups: Any = None,
    n_iter: int = 1000,
    level: float = 0.95,
    seed: Seed = 0,
) -> tuple[float, float, float]:
    """``(auc, low, high)``: the AUC and its percentile CI from a patient-level bootstrap.

    Patients are drawn with replacement and each brings all of its images; resamples that
    contain one class only are skipped. Bounds are NaN if no resample had both classes.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    auc = roc_auc(y, prob)
    boot = bootstrap_aucs(y, [prob], groups, n_iter, seed)[:, 0]
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return auc, math.nan, math.nan
    alpha = (1 - level) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return auc, float(low), float(high)


def paired_bootstrap_test(
    y: Any,
    prob_a: Any,
    prob_b: Any,
    groups: Any = None,
    n_iter: int = 1000,
    seed: Seed = 0,
) -> tuple[float, float]:
    """``(delta, p_value)`` for H1: model A has a higher AUC than model B (one-sided).

    ``delta`` is AUC(A) - AUC(B) on the full data. Both models are scored on the same
    patient-level resamples; the p-value is the share of resamples in which A is not better
    (delta <= 0), with the usual +1 correction so it is never exactly 0: (1 + #) / (1 + B).
    """
    delta = roc_auc(y, prob_a) - roc_auc(y, prob_b)
    boot = bootstrap_aucs(y, [prob_a, prob_b], groups, n_iter, seed)
    diffs = boot[:, 0] - boot[:, 1]
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return delta, math.nan
    p_value = (1 + np.sum(diffs <= 0)) / (1 + diffs.size)
    return delta, float(p_value)


# --------------------------------------------------------------------------- DeLong


def delong_components(y: Any, scores: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and structural components (V10 over positives, V01 over negatives) per score.

    The fast midrank algorithm of Sun & Xu (2014): O(k N log N) instead of the O(k m n)
    Mann–Whitney kernel, with ties counted as 1/2. Returns ``(aucs (k,), v10 (k, m),
    v01 (k, n))``.
    """
    from scipy.stats import rankdata

    y_arr = np.asarray(y).astype(np.int64).ravel()
    s = np.vstack([_as_arrays(y_arr, p)[1] for p in scores])
    pos, neg = s[:, y_arr == 1], s[:, y_arr == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs both classes")
    tx = rankdata(pos, axis=1)  # midranks among positives
    ty = rankdata(neg, axis=1)  # midranks among negatives
    tz = rankdata(np.hstack([pos, neg]), axis=1)  # midranks among all
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, v10, v01


def delong_test(
    y: Any, prob_a: Any, prob_b: Any, alternative: Alternative = "two-sided"
) -> tuple[float, float, float, float]:
    """``(auc_a, auc_b, z, p_value)``: DeLong's test for two correlated ROC AUCs.

    Both models score the same images. ``alternative='greater'`` tests H1: AUC(A) > AUC(B)
    (used for promotion); ``'two-sided'`` tests AUC(A) != AUC(B). When the variance of the
    difference is zero the AUCs cannot be told apart: identical AUCs give z = 0, p = 1
    (one-sided p = 0.5 would wrongly suggest a coin flip, so p = 1 there too); different AUCs
    with zero variance (degenerate, e.g. perfect vs constant scores) give z = ±inf.
    """
    aucs, v10, v01 = delong_components(y, [prob_a, prob_b])
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.cov(v10) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(v01) if n > 1 else np.zeros((2, 2))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-15:
        if abs(diff) < 1e-12:
            return float(aucs[0]), float(aucs[1]), 0.0, 1.0
        z = math.copysign(math.inf, diff)
    else:
        z = diff / math.sqrt(var)
    return float(aucs[0]), float(aucs[1]), z, _normal_p(z, alternative)


def _normal_p(z: float, alternative: Alternative) -> float:
    from scipy.stats import norm

    if alternative == "two-sided":
        return float(min(1.0, 2 * norm.sf(abs(z))))
    if alternative == "greater":
        return float(norm.sf(z))
    raise ValueError(f"unknown alternative {alternative!r}")
