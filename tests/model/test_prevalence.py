"""PPV/NPV at the deployment prevalence, ECE, and evaluate with TTA and calibration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.evaluation import finishing


def _confusion(tp: int, fn: int, tn: int, fp: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.r_[np.ones(tp + fn), np.zeros(tn + fp)].astype(int)
    p = np.r_[np.full(tp, 0.9), np.full(fn, 0.1), np.full(tn, 0.2), np.full(fp, 0.7)]
    return y, p


def test_ppv_npv_at_prevalence_follow_bayes() -> None:
    y, p = _confusion(tp=40, fn=10, tn=80, fp=20)  # sensitivity 0.8, specificity 0.8
    groups = np.arange(len(y)).astype(str)
    m = finishing.prevalence_metrics(y, p, 0.5, groups, 0.1, 200, 0.95, 0)
    assert m["test_ppv_at_prevalence"] == pytest.approx(0.8 * 0.1 / (0.8 * 0.1 + 0.2 * 0.9))
    assert m["test_npv_at_prevalence"] == pytest.approx(0.8 * 0.9 / (0.8 * 0.9 + 0.2 * 0.1))
    for k in ("ppv", "npv"):
        low, high = m[f"test_{k}_at_prevalence_ci_low"], m[f"test_{k}_at_prevalence_ci_high"]
        assert low <= m[f"test_{k}_at_prevalence"] <= high and low < high
    # at the test split's own prevalence: the empirical PPV and NPV
    own = finishing.prevalence_metrics(y, p, 0.5, groups, 50 / 150, 20, 0.95, 0)
    assert own["test_ppv_at_prevalence"] == pytest.approx(40 / 60)
    assert own["test_npv_at_prevalence"] == pytest.approx(80 / 90)


def test_ece() -> None:
    y = np.r_[np.ones(3), np.zeros(7)]
    assert finishing.ece(y, np.full(10, 0.3)) == pytest.approx(0.0)
    assert finishing.ece(y, np.full(10, 0.8)) == pytest.approx(0.5)
    probs = np.array([[0.9, 0.1], [0.6, 0.4]])  # top-class: confident 0.9 right, 0.6 wrong
    assert finishing.ece(np.array([0, 1]), probs, 10) == pytest.approx(0.5 * 0.1 + 0.5 * 0.6)


def test_evaluate_with_tta_and_calibration(tmp_path: Path) -> None:
    from pipeline.baselines import stage as baseline
    from pipeline.evaluation import evaluate
    from pipeline.metrics import stats
    from pipeline.models.networks import load_model, predict, uncalibrated
    from tests.model.eval_fixtures import (
        log_training_run,
        make_preprocessed,
        mlflow_env,
        params_for,
        save_cnn,
        tiny_task,
        train_tiny_cnn,
    )

    data = make_preprocessed(tmp_path / "data")
    task = tiny_task(data)
    with mlflow_env(tmp_path):
        params = params_for(
            tmp_path,
            baseline={"search": False},
            evaluate={"tta": "flips", "deployment_prevalence": 0.2, "bootstrap_iterations": 100},
        )
        out = save_cnn(train_tiny_cnn(data, steps=30), tmp_path / "cnn", task=task)
        meta_file = out / "model.json"
        meta: dict[str, Any] = json.loads(meta_file.read_text())
        meta["output"]["temperature"] = 2.5
        meta_file.write_text(json.dumps(meta))
        log_training_run(params, out)
        baseline.run(params, baseline.Paths.from_params(params))
        result = evaluate.run(params, evaluate.Paths.from_params(params))
    m = result.metrics["cnn"]
    net, meta = load_model(out)
    x_val, y_val = np.load(data / "val_x.npy"), np.load(data / "val_y.npy")
    x_test, y_test = np.load(data / "test_x.npy"), np.load(data / "test_y.npy")
    p_val = predict(net, meta, x_val, tta="flips")
    p_test = predict(net, meta, x_test, tta="flips")
    # the threshold is chosen on the same (TTA, calibrated) kind of validation predictions
    method = params.evaluate.threshold_method
    assert m["threshold"] == pytest.approx(stats.choose_threshold(y_val, p_val, method, 0.9))
    assert m["test_auc"] == pytest.approx(stats.roc_auc(y_test, p_test))
    assert m["test_ece"] == pytest.approx(finishing.ece(y_test, p_test))
    raw = predict(net, meta | {"output": uncalibrated(meta["output"])}, x_test, tta="flips")
    assert m["test_ece_uncalibrated"] == pytest.approx(finishing.ece(y_test, raw))
    assert m["test_ece"] != pytest.approx(m["test_ece_uncalibrated"])
    sens, spec = m["test_sensitivity"], m["test_specificity"]
    assert m["test_ppv_at_prevalence"] == pytest.approx(
        0.2 * sens / (0.2 * sens + 0.8 * (1 - spec))
    )
    assert "test_npv_at_prevalence" in result.metrics["baseline"]
    report = (tmp_path / "reports" / "evaluation.md").read_text()
    assert "evaluate.tta: flips" in report and "before calibration" in report
    assert "deployment prevalence 0.2" in report
    assert (tmp_path / "reports" / "figures" / "calibration_before_after.png").is_file()
