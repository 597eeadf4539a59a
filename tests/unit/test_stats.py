"""pipeline.metrics.stats against scikit-learn, hand-worked examples and an independent DeLong."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from pipeline.metrics import stats


def _data(n: int = 300, seed: int = 0, strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = 1 / (1 + np.exp(-(strength * (2 * y - 1) + rng.normal(size=n))))
    return y, score


def test_binary_metrics_match_sklearn() -> None:
    y, p = _data()
    m = stats.binary_metrics(y, p, 0.5)
    pred = (p >= 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (tn, fp, fn, tp)
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred))
    assert m["ppv"] == pytest.approx(precision_score(y, pred))
    assert m["npv"] == pytest.approx(precision_score(1 - y, 1 - pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["n"] == len(y)


def test_binary_metrics_threshold_is_inclusive_and_zero_division_is_nan() -> None:
    m = stats.binary_metrics([0, 1], [0.3, 0.5], 0.5)
    assert (m["tp"], m["tn"]) == (1, 1)
    nothing_positive = stats.binary_metrics([0, 0, 1], [0.1, 0.2, 0.3], 0.9)
    assert math.isnan(nothing_positive["ppv"])
    assert nothing_positive["sensitivity"] == 0.0
    no_positives = stats.binary_metrics([0, 0], [0.1, 0.9], 0.5)
    assert math.isnan(no_positives["sensitivity"]) and no_positives["f1"] == 0.0
    assert no_positives["specificity"] == 0.5
    all_correct_negatives = stats.binary_metrics([0, 0], [0.1, 0.2], 0.5)
    assert math.isnan(all_correct_negatives["f1"]) and math.isnan(all_correct_negatives["ppv"])


def test_auc_brier_calibration_match_sklearn() -> None:
    from sklearn.calibration import calibration_curve

    y, p = _data()
    assert stats.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert math.isnan(stats.roc_auc([1, 1], [0.2, 0.3]))
    assert stats.brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    mean_pred, frac_pos = stats.calibration(y, p, 5)
    ref_frac, ref_mean = calibration_curve(y, p, n_bins=5)
    np.testing.assert_allclose(mean_pred, ref_mean)
    np.testing.assert_allclose(frac_pos, ref_frac)


def test_labels_are_checked() -> None:
    with pytest.raises(ValueError):
        stats.binary_metrics([0, 2], [0.1, 0.2], 0.5)
    with pytest.raises(ValueError):
        stats.roc_auc([0, 1, 1], [0.1, 0.2])


def test_youden_threshold_hand_worked() -> None:
    # Thresholds (descending) and (sens, spec): 0.9 → (1/3, 1), 0.8 → (2/3, 1) J=.667,
    # 0.7 → (2/3, 2/3), 0.6 → (1, 2/3) J=.667, 0.2 → (1, 1/3), 0.1 → (1, 0).
    # Tie between 0.8 and 0.6: the highest threshold wins.
    y = [1, 1, 0, 1, 0, 0]
    p = [0.9, 0.8, 0.7, 0.6, 0.2, 0.1]
    assert stats.choose_threshold(y, p, "youden") == pytest.approx(0.8)
    y2 = [1, 0, 1, 1, 0, 0]  # 0.7 → (1, 2/3) J=.667 is the unique best
    p2 = [0.9, 0.8, 0.7, 0.6, 0.2, 0.1]
    assert stats.choose_threshold(y2, p2, "youden") == pytest.approx(0.6)


def test_target_sensitivity_threshold() -> None:
    y = [1, 1, 0, 1, 0, 1, 0, 0]
    p = [0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.1]
    # sensitivity reaches 0.75 at 0.7 and 1.0 at 0.4
    assert stats.choose_threshold(y, p, "sensitivity", 0.75) == pytest.approx(0.7)
    assert stats.choose_threshold(y, p, "sensitivity", 0.76) == pytest.approx(0.4)
    assert stats.choose_threshold(y, p, "sensitivity", 1.0) == pytest.approx(0.4)
    thr = stats.choose_threshold(y, p, "sensitivity", 0.5)
    assert stats.binary_metrics(y, p, thr)["sensitivity"] >= 0.5
    with pytest.raises(ValueError):
        stats.choose_threshold([1, 1], [0.2, 0.3])


def test_weighted_auc_equals_replicated_sklearn() -> None:
    y, p = _data(60, seed=3)
    p = np.round(p, 1)  # plenty of ties
    rng = np.random.default_rng(1)
    w = rng.integers(0, 3, size=(5, len(y))).astype(float)
    got = stats.weighted_aucs(y, p, w)
    for row, value in zip(w, got, strict=True):
        reps = row.astype(int)
        assert value == pytest.approx(roc_auc_score(np.repeat(y, reps), np.repeat(p, reps)))


def test_bootstrap_ci_contains_estimate_and_narrows() -> None:
    y, p = _data(200, seed=1)
    auc, low, high = stats.bootstrap_auc_ci(y, p, None, 500, 0.95, seed=0)
    assert auc == pytest.approx(roc_auc_score(y, p))
    assert low < auc < high
    y4, p4 = _data(3200, seed=1)
    _, low4, high4 = stats.bootstrap_auc_ci(y4, p4, None, 500, 0.95, seed=0)
    assert (high4 - low4) < 0.6 * (high - low)
    assert stats.bootstrap_auc_ci(y, p, None, 200, 0.95, seed=5) == stats.bootstrap_auc_ci(
        y, p, None, 200, 0.95, seed=5
    )


def test_bootstrap_resamples_patients_not_images() -> None:
    # Every image of a patient must appear exactly as often as its patient is drawn.
    groups = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 1, 2, 3, 4, 5])
    codes = stats.group_codes(groups, len(groups))
    for w in stats.bootstrap_weight_chunks(codes, 50, seed=0):
        for g in range(10):
            assert (w[:, groups == g] == w[:, groups == g][:, :1]).all()
        per_patient = np.array([w[:, groups == g][:, 0] for g in range(10)]).T
        assert (per_patient.sum(axis=1) == 10).all()  # 10 patients drawn each time


def test_clustered_bootstrap_is_wider_than_image_bootstrap() -> None:
    # Patients with 10 near-identical images: image-level resampling would be overconfident.
    rng = np.random.default_rng(0)
    patient_y = rng.integers(0, 2, 40)
    patient_p = 1 / (1 + np.exp(-(patient_y - 0.5 + rng.normal(size=40))))
    y = np.repeat(patient_y, 10)
    p = np.repeat(patient_p, 10) + rng.normal(scale=1e-3, size=400)
    groups = np.repeat(np.arange(40), 10)
    _, lo_g, hi_g = stats.bootstrap_auc_ci(y, p, groups, 400, 0.95, seed=0)
    _, lo_i, hi_i = stats.bootstrap_auc_ci(y, p, None, 400, 0.95, seed=0)
    assert (hi_g - lo_g) > 2 * (hi_i - lo_i)


def test_bootstrap_skips_one_class_resamples() -> None:
    y = np.array([0, 1])
    boot = stats.bootstrap_aucs(y, [np.array([0.2, 0.8])], None, 200, seed=0)[:, 0]
    assert np.isnan(boot).any() and np.nanmin(boot) == 1.0
    auc, low, high = stats.bootstrap_auc_ci(y, [0.2, 0.8], None, 200, seed=0)
    assert (auc, low, high) == (1.0, 1.0, 1.0)


def _delong_reference(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Independent O(m·n) DeLong (1988) with the Mann–Whitney kernel: (z, two-sided p)."""
    pos, neg = y == 1, y == 0
    v10, v01, aucs = [], [], []
    for s in (a, b):
        x, z = s[pos], s[neg]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    m, n = pos.sum(), neg.sum()

    def cov(v: list[np.ndarray]) -> np.ndarray:
        c = np.empty((2, 2))
        for i in range(2):
            for j in range(2):
                c[i, j] = np.sum((v[i] - v[i].mean()) * (v[j] - v[j].mean())) / (len(v[i]) - 1)
        return c

    s = cov(v10) / m + cov(v01) / n
    z = (aucs[0] - aucs[1]) / math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    return z, 2 * norm.sf(abs(z))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 150)
    a = y + rng.normal(size=150)
    b = np.round(0.5 * y + rng.normal(size=150), 1)  # ties in one predictor
    auc_a, auc_b, z, p = stats.delong_test(y, a, b)
    z_ref, p_ref = _delong_reference(y, a, b)
    assert auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert z == pytest.approx(z_ref, abs=1e-8)
    assert p == pytest.approx(p_ref, abs=1e-8)
    _, _, z_g, p_g = stats.delong_test(y, a, b, alternative="greater")
    assert z_g == pytest.approx(z) and p_g == pytest.approx(norm.sf(z_ref), abs=1e-8)


def test_delong_identical_and_clearly_better() -> None:
    y, p = _data(200, seed=4)
    auc_a, auc_b, z, pv = stats.delong_test(y, p, p)
    assert auc_a == auc_b and z == 0 and pv == 1.0
    assert stats.delong_test(y, p, p, alternative="greater")[3] == 1.0
    rng = np.random.default_rng(0)
    good = y + 0.3 * rng.normal(size=len(y))
    weak = y + 3.0 * rng.normal(size=len(y))
    _, _, z, pv = stats.delong_test(y, good, weak, alternative="greater")
    assert z > 0 and pv < 1e-4
    assert stats.delong_test(y, weak, good, alternative="greater")[3] > 0.99


def test_paired_bootstrap_agrees_with_delong() -> None:
    y, _ = _data(200, seed=5)
    rng = np.random.default_rng(1)
    good = y + 0.5 * rng.normal(size=len(y))
    weak = y + 2.0 * rng.normal(size=len(y))
    groups = np.repeat(np.arange(100), 2)
    delta, p = stats.paired_bootstrap_test(y, good, weak, groups, 500, seed=0)
    assert delta == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, weak))
    assert delta > 0 and p < 0.01
    delta_r, p_r = stats.paired_bootstrap_test(y, weak, good, groups, 500, seed=0)
    assert delta_r == pytest.approx(-delta) and p_r > 0.99
    assert stats.paired_bootstrap_test(y, good, good, groups, 100, seed=0) == (0.0, 1.0)


# --------------------------------------------------------------------------- K classes


def _three_class(n: int = 240, seed: int = 0, strength: float = 1.5) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + strength * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    groups = np.repeat(np.arange(n // 2), 2)
    return y, probs, groups


def test_multiclass_metrics_match_sklearn() -> None:
    from pipeline.metrics import multiclass_stats as ms

    y, probs, _ = _three_class()
    pred = probs.argmax(axis=1)
    np.testing.assert_allclose(
        ms.ovr_aucs(y, probs), roc_auc_score(y, probs, multi_class="ovr", average=None)
    )
    assert ms.macro_auc(y, probs) == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    m = ms.class_metrics(y, probs)
    np.testing.assert_array_equal(m["confusion"], confusion_matrix(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    np.testing.assert_allclose(m["sensitivity"], recall_score(y, pred, average=None))
    np.testing.assert_allclose(m["ppv"], precision_score(y, pred, average=None))
    # a class never predicted: PPV undefined (NaN), its F1 counted as 0 like scikit-learn
    never = ms.class_metrics(
        [0, 1, 2, 2], np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.6, 0.4, 0], [0.1, 0.9, 0]])
    )
    assert math.isnan(never["ppv"][2]) and never["sensitivity"][2] == 0.0
    assert never["f1_macro"] == pytest.approx(
        f1_score([0, 1, 2, 2], [0, 1, 0, 1], average="macro", zero_division=0)
    )


def test_multiclass_bootstrap_cis_and_paired_test() -> None:
    from pipeline.metrics import multiclass_stats as ms

    y, good, groups = _three_class()
    _, weak, _ = _three_class(seed=0, strength=0.3)
    cis = ms.bootstrap_auc_cis(y, good, groups, n_iter=300, level=0.95, seed=1)
    auc, low, high = cis["macro"]
    assert low < auc < high and high - low < 0.2
    assert all(lo <= a <= hi for a, lo, hi in cis["per_class"])
    # one seed, one set of resamples: the same interval again, from an int or a generator
    again = ms.bootstrap_auc_cis(y, good, groups, 300, 0.95, np.random.default_rng(1))
    assert again["macro"] == cis["macro"]
    # a resample lacking a class is skipped, not scored
    lonely = np.array([0, 0, 1, 1, 2])
    boot = ms.bootstrap_ovr_aucs(lonely, [np.eye(3)[lonely]], None, 200, 0)
    assert np.isnan(boot[:, 0, 2]).any() and np.isfinite(boot[:, 0, 0]).any()
    delta, p = ms.paired_bootstrap_macro_auc(y, good, weak, groups, 300, 0)
    assert delta > 0.1 and p < 0.01
    assert ms.paired_bootstrap_macro_auc(y, weak, good, groups, 300, 0)[1] > 0.9
    assert ms.paired_bootstrap_macro_auc(y, good, good, groups, 300, 0) == (0.0, 1.0)


# --------------------------------------------------------------------------- regression


def _values(n: int = 200, seed: int = 0, noise: float = 1.0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y = rng.uniform(2, 12, n)
    groups = np.repeat(np.arange(n // 2), 2)
    return y, y + rng.normal(0, noise, n), groups


def test_regression_errors_match_sklearn_and_cis_bracket_them() -> None:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    from pipeline.metrics import regression_stats as rs

    y, pred, groups = _values()
    e = rs.errors(y, pred)
    assert e["mae"] == pytest.approx(mean_absolute_error(y, pred))
    assert e["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, pred)))
    assert e["r2"] == pytest.approx(r2_score(y, pred))
    diff = pred - y
    assert e["loa_high"] - e["bias"] == pytest.approx(1.96 * diff.std(ddof=1))
    cis = rs.bootstrap_error_cis(y, pred, groups, n_iter=400, level=0.95, seed=0)
    for key in ("mae", "rmse", "r2"):
        value, low, high = cis[key]
        assert value == pytest.approx(e[key]) and low < value < high
    # a resample's weighted statistics equal scikit-learn on the replicated images
    w = np.random.default_rng(3).integers(0, 3, size=(1, y.size)).astype(float)
    rep = np.repeat(np.arange(y.size), w[0].astype(int))
    got = rs.weighted_errors(y, pred, w)
    assert got["mae"][0] == pytest.approx(mean_absolute_error(y[rep], pred[rep]))
    assert got["r2"][0] == pytest.approx(r2_score(y[rep], pred[rep]))


@pytest.mark.parametrize("method", ["wilcoxon", "paired_bootstrap"])
def test_paired_abs_error_test(method: Any) -> None:
    from pipeline.metrics import regression_stats as rs

    y, good, groups = _values(noise=0.5)
    _, bad, _ = _values(seed=1, noise=2.0)
    mae_new, mae_old, p = rs.paired_abs_error_test(y, good, bad, groups, method, 500, 0)
    assert mae_new < mae_old and p < 0.01
    assert rs.paired_abs_error_test(y, bad, good, groups, method, 500, 0)[2] > 0.9
    assert rs.paired_abs_error_test(y, good, good, groups, method, 500, 0)[2] == 1.0
    # patients, not images: per-patient mean absolute errors
    np.testing.assert_allclose(
        rs.patient_abs_errors(y, good, groups), np.abs(good - y).reshape(-1, 2).mean(axis=1)
    )
