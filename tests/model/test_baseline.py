"""Hand-crafted features and the skops-saved SVM baseline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.baselines import stage as baseline
from pipeline.baselines import store, svm
from pipeline.baselines.common import task_split
from pipeline.baselines.features import extract_features, feature_names, fit_spec
from pipeline.config import BaselineSection
from pipeline.errors import InputError
from tests.model.eval_fixtures import make_preprocessed, mlflow_env, params_for


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_preprocessed(tmp_path_factory.mktemp("baseline") / "data")


@pytest.fixture(scope="module")
def train_features(data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    import pandas as pd

    x = np.load(data / "train_x.npy")
    feats, names = extract_features(x, fit_spec(x, 8))
    y = np.load(data / "train_y.npy")
    groups = pd.read_parquet(data / "train_index.parquet")["patient_id"].to_numpy()
    return feats, y, groups, names


def test_features_shape_names_and_finiteness(data: Path) -> None:
    x = np.load(data / "val_x.npy")
    spec = fit_spec(np.load(data / "train_x.npy"), 12)
    feats, names = extract_features(x, spec)
    assert feats.shape == (len(x), len(names)) and names == feature_names(spec)
    assert len(set(names)) == len(names) and sum(n.startswith("hist_") for n in names) == 12
    assert np.isfinite(feats).all()
    # one image's features do not depend on the other images in the batch
    alone, _ = extract_features(x[3:4], spec)
    np.testing.assert_allclose(alone[0], feats[3])
    # degenerate images (constant, empty foreground) stay finite
    flat, _ = extract_features(np.zeros((2, 1, 24, 24), np.float32), spec)
    assert np.isfinite(flat).all()
    # the bright-blob images are brighter at the top of their histogram
    y = np.load(data / "val_y.npy")
    p99 = feats[:, names.index("int_p99")]
    assert p99[y == 1].mean() > p99[y == 0].mean()


@pytest.mark.parametrize("selection", ["univariate", "recursive"])
def test_selection_picks_k(train_features: Any, selection: str) -> None:
    feats, y, _, _ = train_features
    cfg = BaselineSection(selection=selection, k_features=5, kernel="linear")
    pipe = svm.build_pipeline(cfg, feats.shape[1], seed=0).fit(feats, y)
    assert pipe.named_steps["select"].get_support().sum() == 5
    too_many = BaselineSection(selection=selection, k_features=10_000, kernel="linear")
    capped = svm.build_pipeline(too_many, feats.shape[1], 0).fit(feats, y)
    assert capped.named_steps["select"].get_support().sum() == feats.shape[1]


@pytest.mark.parametrize("kernel", ["linear", "rbf", "poly"])
def test_each_kernel_trains_with_probabilities(train_features: Any, kernel: str) -> None:
    feats, y, groups, _ = train_features
    cfg = BaselineSection(
        kernel=kernel,
        k_features=8,
        cv_folds=3,
        search=kernel == "rbf",
        C_grid=[0.1, 1.0],
        gamma_grid=["scale", 0.01],
    )
    pipe, best, cv_auc = svm.fit(cfg, feats, y, groups, seed=0)
    prob = pipe.predict_proba(feats)[:, 1]
    assert ((prob >= 0) & (prob <= 1)).all()
    assert roc_auc_score(y, prob) > 0.7
    assert best["C"] in ([0.1, 1.0] if kernel == "rbf" else [1.0])
    assert np.isnan(cv_auc) != (kernel == "rbf")
    assert pipe.named_steps["svm"].estimator.kernel == kernel


def test_scaler_is_fitted_on_training_features_only(train_features: Any) -> None:
    feats, y, groups, _ = train_features
    cfg = BaselineSection(k_features=6, cv_folds=3, search=False)
    pipe, _, _ = svm.fit(cfg, feats, y, groups, seed=0)
    np.testing.assert_allclose(pipe.named_steps["scale"].mean_, feats.mean(axis=0))
    np.testing.assert_allclose(
        pipe.named_steps["scale"].scale_[feats.std(axis=0) > 0],
        feats.std(axis=0)[feats.std(axis=0) > 0],
    )


def _custom(x: Any) -> Any:  # a function skops must not trust
    return x


def test_skops_round_trip_and_untrusted_types_refused(train_features: Any, tmp_path: Path) -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.svm import SVC

    feats, y, groups, _ = train_features
    pipe, _, _ = svm.fit(
        BaselineSection(k_features=6, cv_folds=3, search=False), feats, y, groups, 0
    )
    path = store.save(pipe, tmp_path / "model.skops")
    assert not path.read_bytes().startswith(b"\x80")  # a zip archive, not a pickle stream
    loaded = store.load_pipeline(path)
    np.testing.assert_array_equal(loaded.predict_proba(feats), pipe.predict_proba(feats))

    evil = make_pipeline(FunctionTransformer(_custom), SVC()).fit(feats, y)
    bad = store.save(evil, tmp_path / "evil.skops")
    with pytest.raises(InputError, match="untrusted"):
        store.load_pipeline(bad)
    with pytest.raises(InputError):
        store.load_pipeline(tmp_path / "missing.skops")


@pytest.fixture(scope="module")
def stage(data: Path) -> Iterator[tuple[Path, Any, Any]]:
    root = data.parent
    with mlflow_env(root):
        params = params_for(root, baseline={"k_features": 7})
        result = baseline.run(params, baseline.Paths.from_params(params))
        yield root, params, result


def test_stage_outputs(stage: Any, data: Path) -> None:
    root, _, result = stage
    out = root / "baseline"
    meta = json.loads((out / "baseline.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert (out / "model.skops").exists() and run["run_id"] == result.run_id
    assert len(meta["selected_features"]) == 7
    assert set(meta["selected_features"]) <= set(meta["feature_names"])
    assert set(meta["best_params"]) == {"C", "gamma"} and meta["kernel"] == "rbf"
    pipe, loaded_meta = baseline.load(out)
    prob = baseline.predict(pipe, loaded_meta, np.load(data / "val_x.npy"))
    assert meta["val_auc"] == pytest.approx(roc_auc_score(np.load(data / "val_y.npy"), prob))
    assert result.val_auc > 0.7 and "validation AUC" in result.summary()


def test_stage_mlflow_run(stage: Any) -> None:
    from mlflow.tracking import MlflowClient

    root, _, result = stage
    with mlflow_env(root):
        client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == "baseline-svm"
        assert run.data.metrics["val_auc"] == pytest.approx(result.val_auc)
        assert run.data.params["baseline.kernel"] == "rbf"
        assert run.data.tags["radops.stage"] == "baseline"
        artifacts = {a.path for a in client.list_artifacts(result.run_id)}
        assert {"selected_features.json", "baseline.json", "model"} <= artifacts


def test_stage_needs_preprocessed_data(tmp_path: Path) -> None:
    params = params_for(tmp_path)
    with pytest.raises(InputError, match="incomplete"):
        baseline.run(params, baseline.Paths.from_params(params))


# --------------------------------------------------------------------------- other tasks


@pytest.fixture(scope="module")
def graded_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_preprocessed(tmp_path_factory.mktemp("baseline_graded") / "data", targets=True)


def _task_features(data: Path, kind: str, target: str) -> tuple[Any, Any, Any, Any, Any]:
    from tests.model.eval_fixtures import tiny_task

    task = tiny_task(data, kind, target)
    x, y, index, _ = task_split(task, data, "train")
    feats, _ = extract_features(x, fit_spec(x, 8))
    return task, feats, y, index["patient_id"].to_numpy(), x


def test_three_class_svm_is_one_vs_rest_with_probabilities(graded_data: Path) -> None:
    from sklearn.multiclass import OneVsRestClassifier

    task, feats, y, groups, _ = _task_features(graded_data, "classification", "grade")
    cfg = BaselineSection(k_features=8, cv_folds=3, C_grid=[0.1, 1.0], gamma_grid=["scale"])
    pipe, best, cv_auc = svm.fit(cfg, feats, y, groups, seed=0, task=task)
    probs = svm.outputs(pipe, feats, task)
    assert probs.shape == (len(y), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert isinstance(pipe.named_steps["svm"].estimator, OneVsRestClassifier)
    assert best["C"] in (0.1, 1.0) and 0.5 < cv_auc <= 1.0
    assert roc_auc_score(y, probs, multi_class="ovr") > 0.7


@pytest.mark.parametrize("kernel", ["linear", "rbf", "poly"])
def test_svr_for_a_continuous_target(graded_data: Path, kernel: str) -> None:
    from sklearn.metrics import mean_absolute_error
    from sklearn.svm import SVR

    task, feats, y, groups, _ = _task_features(graded_data, "regression", "lesion_diameter_mm")
    assert np.isfinite(y).all() and len(y) < len(np.load(graded_data / "train_x.npy"))
    cfg = BaselineSection(
        kernel=kernel, k_features=8, cv_folds=3, C_grid=[0.1, 1.0], gamma_grid=["scale"]
    )
    pipe, best, cv_mae = svm.fit(cfg, feats, y, groups, seed=0, task=task)
    pred = svm.outputs(pipe, feats, task)
    assert pred.shape == (len(y),) and isinstance(pipe.named_steps["svm"], SVR)
    assert pipe.named_steps["svm"].kernel == kernel and best["C"] in (0.1, 1.0)
    # in the target's units (mm), and better than predicting the training mean
    assert mean_absolute_error(y, pred) < mean_absolute_error(y, np.full_like(y, y.mean()))
    assert 0 < cv_mae < 3 * y.std()


def test_regression_stage_keeps_rows_with_a_value(graded_data: Path) -> None:
    root = graded_data.parent
    with mlflow_env(root):
        params = params_for(
            root,
            task={"kind": "regression", "target": "lesion_diameter_mm"},
            baseline={"search": False, "k_features": 6, "out_dir": str(root / "svr")},
        )
        result = baseline.run(params, baseline.Paths.from_params(params))
    meta = json.loads((root / "svr/baseline.json").read_text())
    index = pd.read_parquet(graded_data / "train_index.parquet")
    assert meta["n_train"] == int(index["lesion_diameter_mm"].notna().sum()) < len(index)
    assert meta["task"]["kind"] == "regression" and "val_mae" in meta
    assert result.score == "mae" and "SVR" in result.summary()
    pipe, loaded = baseline.load(root / "svr")
    pred = baseline.predict(pipe, loaded, np.load(graded_data / "val_x.npy"))
    assert pred.shape == (len(np.load(graded_data / "val_x.npy")),)
