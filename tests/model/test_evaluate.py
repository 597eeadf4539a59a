"""``radops evaluate`` on a small fixture: files, numbers, threshold provenance, flags, MLflow."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

from pipeline.baselines import stage as baseline
from pipeline.config import EvaluateSection
from pipeline.errors import InputError
from pipeline.evaluation import evaluate
from pipeline.metrics import stats
from tests.model.eval_fixtures import (
    history,
    log_training_run,
    make_preprocessed,
    mlflow_env,
    params_for,
    save_cnn,
    train_tiny_cnn,
)

# What the binary classifier's evaluation writes, as in every radops release so far.
BINARY_METRIC_KEYS = (
    "test_auc",
    "test_auc_ci_low",
    "test_auc_ci_high",
    "test_sensitivity",
    "test_specificity",
    "test_ppv",
    "test_npv",
    "test_f1",
    "test_accuracy",
    "test_brier",
    "threshold",
)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any, Any]]:
    root = tmp_path_factory.mktemp("evaluate")
    data = make_preprocessed(root / "data")
    with mlflow_env(root):
        params = params_for(root, baseline={"search": False})
        save_cnn(train_tiny_cnn(data, steps=30), root / "cnn")
        log_training_run(params, root / "cnn")
        baseline.run(params, baseline.Paths.from_params(params))
        result = evaluate.run(params, evaluate.Paths.from_params(params))
        yield root, params, result


def test_outputs_exist_with_exact_metric_keys(evaluated: Any) -> None:
    root, _, result = evaluated
    out = root / "reports"
    expected = [
        "metrics_cnn.json",
        "metrics_baseline.json",
        "predictions_val.parquet",
        "predictions_test.parquet",
        "plots/roc.csv",
        "plots/calibration.csv",
        "figures/roc.png",
        "figures/confusion_matrix_cnn.png",
        "figures/confusion_matrix_baseline.png",
        "figures/calibration.png",
        "subgroups.csv",
        "evaluation.md",
    ]
    assert [f for f in expected if not (out / f).is_file()] == []
    for name in ("cnn", "baseline"):
        metrics = json.loads((out / f"metrics_{name}.json").read_text())
        assert set(BINARY_METRIC_KEYS) <= set(metrics)
        assert all(isinstance(v, int | float) for v in metrics.values())  # flat, numeric
        assert metrics == pytest.approx(result.metrics[name])
    roc = pd.read_csv(out / "plots/roc.csv")
    assert list(roc.columns) == ["model", "fpr", "tpr"] and set(roc.model) == {"cnn", "baseline"}
    for name in ("cnn", "baseline"):
        single = pd.read_csv(out / f"plots/roc_{name}.csv")
        assert list(single.columns) == ["fpr", "tpr"] and len(single) == (roc.model == name).sum()
        assert list(pd.read_csv(out / f"plots/calibration_{name}.csv").columns) == [
            "mean_predicted",
            "fraction_positive",
        ]
    cal = pd.read_csv(out / "plots/calibration.csv")
    assert list(cal.columns) == ["model", "mean_predicted", "fraction_positive"]
    preds = pd.read_parquet(out / "predictions_test.parquet")
    assert list(preds.columns) == [*evaluate.PREDICTION_COLUMNS, "prob_cnn", "prob_baseline"]
    assert (out / "figures/roc.png").read_bytes().startswith(b"\x89PNG")
    assert "AUC" in result.summary() and "CI" in result.summary()


def test_metrics_equal_sklearn_recomputation(evaluated: Any) -> None:
    from pipeline.models.networks import load_model, predict

    root, _, _ = evaluated
    out = root / "reports"
    test = pd.read_parquet(out / "predictions_test.parquet")
    y_test = np.load(root / "data/test_y.npy")
    np.testing.assert_array_equal(test["label"], y_test)
    net, meta = load_model(root / "cnn")
    # evaluate.tta auto: flips for this binary classifier
    x = np.load(root / "data/test_x.npy")
    np.testing.assert_allclose(test["prob_cnn"], predict(net, meta, x, tta="flips"), rtol=1e-6)
    for name in ("cnn", "baseline"):
        m = json.loads((out / f"metrics_{name}.json").read_text())
        prob = test[f"prob_{name}"].to_numpy()
        pred = (prob >= m["threshold"]).astype(int)
        tn, fp, fn, tp = confusion_matrix(y_test, pred).ravel()
        assert (m["test_tn"], m["test_fp"], m["test_fn"], m["test_tp"]) == (tn, fp, fn, tp)
        assert m["test_auc"] == pytest.approx(roc_auc_score(y_test, prob))
        assert m["test_sensitivity"] == pytest.approx(tp / (tp + fn))
        assert m["test_specificity"] == pytest.approx(tn / (tn + fp))
        assert m["test_ppv"] == pytest.approx(tp / (tp + fp))
        assert m["test_npv"] == pytest.approx(tn / (tn + fn))
        assert m["test_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert m["test_accuracy"] == pytest.approx((tp + tn) / len(y_test))
        assert m["test_brier"] == pytest.approx(brier_score_loss(y_test, prob))
        assert m["test_auc_ci_low"] <= m["test_auc"] <= m["test_auc_ci_high"]
        assert m["n_test_patients"] == test["patient_id"].nunique()
    sub = pd.read_csv(out / "subgroups.csv")
    site = sub[(sub.model == "cnn") & (sub.attribute == "site")].iloc[0]
    mask = test["site"] == site["group"]
    assert site["n"] == mask.sum()
    assert site["auc"] == pytest.approx(roc_auc_score(y_test[mask], test["prob_cnn"][mask]))


def test_threshold_comes_from_validation(evaluated: Any, tmp_path: Path) -> None:
    root, params, result = evaluated
    val = pd.read_parquet(root / "reports/predictions_val.parquet")
    for name in ("cnn", "baseline"):
        expected = stats.choose_threshold(val["label"], val[f"prob_{name}"], "youden")
        assert result.metrics[name]["threshold"] == pytest.approx(expected)
    # Flip the test labels: every test number changes, the thresholds do not.
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    np.save(data / "test_y.npy", 1 - np.load(data / "test_y.npy"))
    index = pd.read_parquet(data / "test_index.parquet")
    index.assign(label=1 - index["label"]).to_parquet(data / "test_index.parquet", index=False)
    for model in ("cnn", "baseline"):  # copies without run.json: logged to fresh runs
        shutil.copytree(root / model, tmp_path / model, ignore=shutil.ignore_patterns("run.json"))
    paths = dataclasses.replace(
        evaluate.Paths.from_params(params),
        data_dir=data,
        cnn_dir=tmp_path / "cnn",
        baseline_dir=tmp_path / "baseline",
        out_dir=tmp_path / "reports",
    )
    with mlflow_env(root):
        flipped = evaluate.run(params, paths)
    for name in ("cnn", "baseline"):
        assert flipped.metrics[name]["threshold"] == result.metrics[name]["threshold"]
        assert flipped.metrics[name]["test_auc"] == pytest.approx(
            1 - result.metrics[name]["test_auc"]
        )
        assert flipped.run_ids[name] != result.run_ids[name]


def test_fit_flags() -> None:
    cfg = EvaluateSection(overfit_gap=0.1, underfit_auc=0.7)
    healthy = evaluate.fit_flags(history(0.9, 0.88), cfg)
    assert healthy["overfitting"] is False and healthy["underfitting"] is False
    gap = evaluate.fit_flags(history(0.99, 0.75), cfg)
    assert gap["overfitting"] is True and gap["underfitting"] is False
    assert gap["train_val_gap"] == pytest.approx(0.24)
    assert any("OVERFITTING" in s for s in gap["statements"])
    low = evaluate.fit_flags(history(0.62, 0.6), cfg)
    assert low["underfitting"] is True and low["overfitting"] is False
    rising = history(0.9, 0.88, epochs=6)
    for i, epoch in enumerate(rising["epochs"]):
        epoch["val_loss"] = 0.4 + 0.05 * i
    assert evaluate.fit_flags(rising, cfg)["overfitting"] is True
    missing = evaluate.fit_flags(None, cfg)
    assert missing["overfitting"] is None and missing["underfitting"] is None


def test_flags_are_in_the_report(evaluated: Any) -> None:
    root, _, result = evaluated
    text = (root / "reports/evaluation.md").read_text()
    assert result.flags["overfitting"] is False
    assert "no overfitting or underfitting flagged" in text
    assert "Youden" in text and "validation" in text


def test_mlflow_runs_get_test_metrics(evaluated: Any) -> None:
    from mlflow.tracking import MlflowClient

    root, _, result = evaluated
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    for name, folder in (("cnn", "cnn"), ("baseline", "baseline")):
        run_id = json.loads((root / folder / "run.json").read_text())["run_id"]
        assert result.run_ids[name] == run_id  # the model's own run was reopened
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        for key in BINARY_METRIC_KEYS:
            assert run.data.metrics[key] == pytest.approx(result.metrics[name][key])
        logged = {Path(a.path).name for a in client.list_artifacts(run_id, "evaluation")}
        assert {
            "roc.png",
            "calibration.png",
            f"confusion_matrix_{name}.png",
            "evaluation.md",
        } <= logged


def test_failed_training_run_is_not_reopened(evaluated: Any, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    root, params, result = evaluated
    shutil.copytree(root / "cnn", tmp_path / "cnn")
    with mlflow_env(root):
        failed = log_training_run(params, tmp_path / "cnn", pyfunc=False, status="FAILED")
        run_json = tmp_path / "cnn" / "run.json"
        fresh = evaluate._log_to_mlflow(params, "cnn", run_json, result.metrics["cnn"], [])
        client = MlflowClient()
        assert fresh != failed["run_id"]
        assert client.get_run(failed["run_id"]).info.status == "FAILED"
        assert client.get_run(fresh).data.tags["radops.evaluated_run"] == failed["run_id"]
        assert client.get_run(fresh).data.metrics["test_auc"] == result.metrics["cnn"]["test_auc"]


def test_report_holds_no_patient_identifiers(evaluated: Any) -> None:
    root, _, _ = evaluated
    text = (root / "reports/evaluation.md").read_text()
    for split in ("train", "val", "test"):
        index = pd.read_parquet(root / f"data/{split}_index.parquet")
        for column in ("patient_id", "image_id", "sop_uid"):
            assert not [v for v in index[column].unique() if v in text]
    assert "P-" not in text


def test_image_size_mismatch_is_refused(evaluated: Any) -> None:
    root, _, _ = evaluated
    with pytest.raises(InputError, match="expects 24×24"):
        evaluate.cnn_predictions(
            *evaluate.load_cnn(root / "cnn"), np.zeros((2, 1, 32, 32), np.float32)
        )


def test_preprocessing_mismatch_is_refused(evaluated: Any, tmp_path: Path) -> None:
    root, _, _ = evaluated
    meta = json.loads((root / "cnn/model.json").read_text())
    evaluate.check_preprocessing(meta, root / "data")  # the fixture's data match
    stats_json = json.loads((root / "data/stats.json").read_text())
    (tmp_path / "stats.json").write_text(json.dumps(stats_json | {"window_width": 1500.0}))
    with pytest.raises(InputError, match="window_width"):
        evaluate.check_preprocessing(meta, tmp_path)
    # Data resampled to a common spacing, for a model whose stats predate spacing_mm (= 0).
    (tmp_path / "stats.json").write_text(json.dumps(stats_json | {"spacing_mm": 6.0}))
    older = meta | {"preprocessing": {**meta["preprocessing"]}}
    older["preprocessing"].pop("spacing_mm", None)
    with pytest.raises(InputError, match="spacing_mm"):
        evaluate.check_preprocessing(older, tmp_path)
    assert not math.isnan(stats.roc_auc([0, 1], [0.1, 0.9]))


# --------------------------------------------------------------------------- other tasks


def _evaluate_task(root: Path, kind: str, target: str) -> tuple[Any, Any, Any]:
    """Data with graded blobs, a tiny CNN and a baseline for ``kind``/``target``, evaluated."""
    from tests.model.eval_fixtures import tiny_task

    data = make_preprocessed(root / "data", targets=True)
    task = tiny_task(data, kind, target)
    with mlflow_env(root):
        params = params_for(root, task={"kind": kind, "target": target}, baseline={"search": False})
        save_cnn(train_tiny_cnn(data, steps=40, task=task), root / "cnn", task=task)
        log_training_run(params, root / "cnn")
        baseline.run(params, baseline.Paths.from_params(params))
        result = evaluate.run(params, evaluate.Paths.from_params(params))
    return params, task, result


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    root = tmp_path_factory.mktemp("evaluate_grade")
    _, task, result = _evaluate_task(root, "classification", "grade")
    return root, task, result


@pytest.fixture(scope="module")
def diameters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    root = tmp_path_factory.mktemp("evaluate_diameter")
    _, task, result = _evaluate_task(root, "regression", "lesion_diameter_mm")
    return root, task, result


def test_three_classes_macro_auc_confusion_and_files(graded: Any) -> None:
    from sklearn.metrics import f1_score

    root, task, result = graded
    out = root / "reports"
    assert task.n_classes == 3 and result.headline == "test_auc_macro"
    test = pd.read_parquet(out / "predictions_test.parquet")
    y = test["grade"].to_numpy()
    assert len(test) == len(np.load(root / "data/test_x.npy"))  # every image has a grade
    for name in ("cnn", "baseline"):
        m = json.loads((out / f"metrics_{name}.json").read_text())
        assert m == pytest.approx(
            result.metrics[name], nan_ok=True
        )  # PPV of a class never predicted
        probs = test[[f"prob_{name}_{k}" for k in range(3)]].to_numpy()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert m["test_auc_macro_ci_low"] <= m["test_auc_macro"] <= m["test_auc_macro_ci_high"]
        assert m["test_auc_macro"] == pytest.approx(
            roc_auc_score(y, probs, multi_class="ovr", average="macro")
        )
        for k in range(3):
            low, auc, high = (m[f"test_auc_class_{k}{s}"] for s in ("_ci_low", "", "_ci_high"))
            assert low <= auc <= high
        matrix = np.array([[m[f"test_confusion_{i}_{j}"] for j in range(3)] for i in range(3)])
        assert matrix.shape == (3, 3) and matrix.sum() == len(y) == m["n_test"]
        np.testing.assert_array_equal(matrix, confusion_matrix(y, probs.argmax(axis=1)))
        assert m["test_accuracy"] == pytest.approx(np.trace(matrix) / len(y))
        assert m["test_f1_macro"] == pytest.approx(
            f1_score(y, probs.argmax(axis=1), average="macro")
        )
        assert m["test_sensitivity_class_2"] == pytest.approx(matrix[2, 2] / matrix[2].sum())
        assert "threshold" not in m and "test_auc" not in m
        assert (out / f"figures/confusion_matrix_{name}.png").read_bytes().startswith(b"\x89PNG")
        assert list(pd.read_csv(out / f"plots/roc_{name}.csv").columns) == ["fpr", "tpr"]
    assert "macro AUC" in (out / "evaluation.md").read_text()
    assert "macro" in result.summary().replace("auc_macro", "macro")


def test_regression_metrics_match_sklearn_and_rows_without_target_are_left_out(
    diameters: Any,
) -> None:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    root, _, result = diameters
    out = root / "reports"
    test = pd.read_parquet(out / "predictions_test.parquet")
    index = pd.read_parquet(root / "data/test_index.parquet")
    n_missing = int(index["lesion_diameter_mm"].isna().sum())
    assert n_missing > 0 and len(test) == len(index) - n_missing
    assert test["lesion_diameter_mm"].notna().all()
    y = test["lesion_diameter_mm"].to_numpy()
    for name in ("cnn", "baseline"):
        m = result.metrics[name]
        pred = test[f"pred_{name}"].to_numpy()
        expected = {
            "mae": mean_absolute_error(y, pred),
            "rmse": float(np.sqrt(mean_squared_error(y, pred))),
            "r2": r2_score(y, pred),
        }
        for key, value in expected.items():
            assert m[f"test_{key}"] == pytest.approx(value, rel=1e-6)
            assert m[f"test_{key}_ci_low"] <= m[f"test_{key}"] <= m[f"test_{key}_ci_high"]
        assert m["n_test"] == len(y) and m["n_test_missing"] == n_missing
        assert m["test_bias"] == pytest.approx(float(np.mean(pred - y)))
        for figure in ("scatter.png", f"bland_altman_{name}.png"):
            assert (out / "figures" / figure).read_bytes().startswith(b"\x89PNG")
        scatter = pd.read_csv(out / f"plots/scatter_{name}.csv")
        np.testing.assert_allclose(scatter["actual"], y, rtol=1e-6)
    assert result.headline == "test_mae" and "left out" in result.summary()
    assert "R²" in (out / "evaluation.md").read_text()


def test_model_of_another_task_is_refused(diameters: Any) -> None:
    root, _, _ = diameters
    params = params_for(root, task={"kind": "classification", "target": "grade"})
    with mlflow_env(root), pytest.raises(InputError, match="regression of 'lesion_diameter_mm'"):
        evaluate.run(params, evaluate.Paths.from_params(params))
