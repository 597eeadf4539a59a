"""The evaluation and promotion half of the task seam: what ``evaluation_summary`` and
``paired_test`` return for each task, on arrays (the stages are tested in tests/model)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import EvaluateSection, RegisterSection
from pipeline.metrics import stats
from pipeline.tasks import ClassificationTask, RegressionTask

CFG = EvaluateSection(bootstrap_iterations=200)


def _binary(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(size=n)))), np.repeat(np.arange(n // 2), 2)


def test_binary_summary_is_the_original_radops_metrics() -> None:
    task = ClassificationTask(state={"n_classes": 2, "class_counts": [5, 5]})
    y, p, groups = _binary()
    y_val, p_val, _ = _binary(seed=1)
    m = task.evaluation_summary(
        y, p, groups, CFG, rng=np.random.default_rng(7), validation=(y_val, p_val)
    )
    threshold = stats.choose_threshold(y_val, p_val)
    assert m["threshold"] == threshold
    # the generator drives the same resamples as the integer seed did before the seam
    assert (m["test_auc"], m["test_auc_ci_low"], m["test_auc_ci_high"]) == (
        stats.bootstrap_auc_ci(y, p, groups, 200, 0.95, 7)
    )
    assert m["test_tp"] == stats.binary_metrics(y, p, threshold)["tp"]
    with pytest.raises(ValueError, match="validation"):
        task.evaluation_summary(y, p, groups, CFG)


def test_multiclass_and_regression_summaries_name_their_metrics() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    probs = rng.dirichlet(np.ones(3), 90) + np.eye(3)[y]
    probs /= probs.sum(axis=1, keepdims=True)
    groups = np.arange(90)
    k3 = ClassificationTask(target="grade", state={"n_classes": 3, "class_counts": [3, 3, 3]})
    m = k3.evaluation_summary(y, probs, groups, CFG, validation=(y, probs))
    assert {"test_auc_macro", "test_auc_macro_ci_low", "test_auc_macro_ci_high"} <= set(m)
    assert {"test_accuracy", "test_f1_macro", "test_ppv_class_2", "val_auc_macro"} <= set(m)
    assert sum(m[f"test_confusion_{i}_{j}"] for i in range(3) for j in range(3)) == 90
    assert "threshold" not in m and k3.promotion_metric in m

    values = rng.uniform(2, 10, 90)
    reg = RegressionTask(target="lesion_diameter_mm", state={"mean": 6.0, "std": 2.0})
    r = reg.evaluation_summary(values, values + rng.normal(0, 1, 90), groups, CFG)
    for key in ("mae", "rmse", "r2"):
        assert r[f"test_{key}_ci_low"] <= r[f"test_{key}"] <= r[f"test_{key}_ci_high"]
    assert reg.promotion_metric in r and "threshold" not in r


def test_paired_tests_per_task() -> None:
    cfg = RegisterSection(alpha=0.05)
    rng = np.random.default_rng(1)
    values = rng.uniform(2, 10, 80)
    groups = np.repeat(np.arange(40), 2)
    reg = RegressionTask(target="d", state={"mean": 6.0, "std": 2.0})
    good, bad = values + rng.normal(0, 0.3, 80), values + rng.normal(0, 2.0, 80)
    better = reg.paired_test(values, good, bad, groups, cfg)
    assert better.better and better.statistic == "mae" and better.method == "wilcoxon"
    same = reg.paired_test(values, good, good, groups, cfg)
    assert not same.better and same.p_value == 1.0
    boot = reg.paired_test(values, good, bad, groups, RegisterSection(promotion_test="bootstrap"))
    assert boot.better and boot.method == "paired_bootstrap"

    y, p, groups = _binary(200)
    binary = ClassificationTask(state={"n_classes": 2, "class_counts": [5, 5]})
    noisy = np.clip(p + rng.normal(0, 0.4, 200), 0, 1)
    won = binary.paired_test(y, p, noisy, groups, cfg)
    assert won.better and won.method == "delong" and won.statistic == "auc"
    assert not binary.paired_test(y, p, p, groups, cfg).better
